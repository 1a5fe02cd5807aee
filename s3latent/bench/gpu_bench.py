"""`s3latent bench gpu --out DIR`: everything that needs a GPU, in one command, under a time budget.

Why one command: a GPU machine is lent rarely and briefly, so the run must be prepared in
advance, fit a few minutes, and leave a JSON and a markdown table that can be committed as
they are. Without a GPU it runs the same code on the CPU (rows say ``cpu``), slowly; ``--tiny``
swaps in tiny random models and small sizes so CI can run it in seconds.

Sections (each one a key of ``results.json`` and a table of ``results.md``):

- ``decode``: latency of ``model.decode`` (what the gateway calls) per model, size, dtype and
  batch: p50/p99 per batch over ``--iters`` timed runs after a warm-up, ms per image, peak
  device memory (CUDA). Models: TAEF2 (real weights from ``--weights`` when present, else
  random), an SD3.5-size and a FLUX.1-size AutoencoderKL with seeded random weights.
- ``identity``: per (model, size, dtype), is each image of a batch byte-identical (uint8, as
  the gateway renders) to the same latent decoded alone, and is a repeated decode identical to
  the first (run to run)?
- ``encode``: PNG/JPEG/WebP encode time and bytes of the decoded pixels (the renditions' encoders,
  ``latent/rendition.py``).
- ``trace``: a short trace replay, ImgStore vs adaptive (``bench/trace_bench.py``) through real
  gateway processes, which decode on the GPU when there is one (``[decode] device = "auto"``).
- ``conversion``: images per second of latent-only admissions (``objects/admission.py``,
  codecs q8 and auto) with 1 and ``--jobs`` conversions in flight, and decodes per admission.

The budget (``--budget-s``, default 420 s: under 8 minutes on an H100/H200 with model builds)
is shared by the sections in order; a decode cell that would not fit is recorded as skipped
with the reason instead of being run, so the command always finishes and says what it left out.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .corpus import default_model_dir

DEFAULT_WEIGHTS = default_model_dir()  # <repo>/../shared/models/taef2
DTYPE_NAMES = ("fp32", "bf16", "fp16")
# Share of the whole budget the sections after `decode` keep for themselves.
RESERVE = {"encode": 0.05, "trace": 0.25, "conversion": 0.12}


@dataclass
class Budget:
    """Wall-clock budget of the whole run; sections ask how much is left before starting."""

    total_s: float
    started: float = field(default_factory=time.perf_counter)

    def used(self) -> float:
        return time.perf_counter() - self.started

    def left(self, keep: float = 0.0) -> float:
        """Seconds left once `keep` (a share of the total) is held back for later sections."""
        return self.total_s * (1.0 - keep) - self.used()


@dataclass(frozen=True)
class ModelCase:
    """One decoder to measure: how to build it for a device and dtype, and what it is."""

    name: str
    build: Callable[[Any, Any], Any]  # (torch.device, torch.dtype) -> LatentDecoder
    channels: int
    weights: str  # "real (path)" or "random"


def _torch_dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def model_cases(tiny: bool, weights: Path, only: Sequence[str] | None) -> list[ModelCase]:
    """The models of the run: TAEF2 (real weights when present) and two full-size VAEs, or their
    tiny stand-ins (same code paths, random weights, a fraction of the width)."""
    from ..models.autoencoder_kl import load_autoencoder_kl
    from ..models.tae import TAEArch, build_random_tae, load_tae

    cases: list[ModelCase] = []
    if tiny:
        arch = TAEArch(latent_channels=4, width=16)
        small_vae = {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1,
                     "norm_num_groups": 4}
        cases += [
            ModelCase("tiny-tae", lambda d, t: build_random_tae(arch, d, t, "tiny-tae", seed=3),
                      4, "random"),
            ModelCase("tiny-vae", lambda d, t: load_autoencoder_kl(
                "sd35", device=d, dtype=t, model_id="tiny-vae", random_weights=True,
                config_overrides=small_vae), 16, "random"),
        ]
    else:
        dec = weights / "taef2_decoder.pth"
        if dec.is_file():
            cases.append(ModelCase("taef2", lambda d, t: load_tae(
                "taef2", dec, device=d, dtype=t, model_id="taef2"), 32, f"real ({dec})"))
        else:
            cases.append(ModelCase("taef2", lambda d, t: build_random_tae(
                "taef2", d, t, "taef2"), 32, "random (no weights at " f"{weights})"))
        for arch, label in (("sd35", "sd35-vae"), ("flux1", "flux1-vae")):
            cases.append(ModelCase(label, lambda d, t, a=arch, n=label: load_autoencoder_kl(
                a, device=d, dtype=t, model_id=n, random_weights=True), 16, "random"))
    if only:
        cases = [c for c in cases if c.name in only]
    return cases


def dtype_support(device: Any, dtype_name: str) -> str | None:
    """Why this dtype is not measured on this device, or None when it is."""
    import torch

    if device.type == "cuda":
        if dtype_name == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16"
        return None
    # CPU: torch runs bf16/fp16 convolutions where oneDNN/ATen have kernels; try a tiny one.
    try:
        dtype = _torch_dtype(dtype_name)
        conv = torch.nn.Conv2d(4, 4, 3, padding=1).to(dtype)
        with torch.inference_mode():
            conv(torch.zeros(1, 4, 8, 8, dtype=dtype))
    except (RuntimeError, NotImplementedError) as exc:
        return f"torch {torch.__version__} on CPU: {str(exc).splitlines()[0][:120]}"
    return None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _uint8(out: Any) -> Any:
    from ..decode.pipeline import pixels_to_uint8

    return pixels_to_uint8(out.float()).cpu().numpy()


def _digest(arr: Any) -> str:
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


def _pct(values: Sequence[float], q: float) -> float:
    from .gateway_bench import percentile

    return percentile(values, q)


def measure_decode(cases: Sequence[ModelCase], device: Any, sizes: Sequence[int],
                   batches: Sequence[int], dtypes: Sequence[str], iters: int, warmup: int,
                   budget: Budget, log: Callable[[str], None]) -> tuple[list[dict[str, Any]],
                                                                        list[dict[str, Any]],
                                                                        dict[str, Any]]:
    """Decode latency cells, identity rows, and one set of uint8 pixels per (model, size)."""
    import torch

    rows: list[dict[str, Any]] = []
    identity: list[dict[str, Any]] = []
    pixels: dict[str, Any] = {}
    kind = device.type
    keep = sum(RESERVE.values())
    for case in cases:
        for dtype_name in dtypes:
            why = dtype_support(device, dtype_name)
            base = {"model": case.name, "dtype": dtype_name, "device": kind,
                    "weights": case.weights}
            if why is not None:
                rows += [{**base, "size": s, "batch": b, "skipped": why}
                         for s in sizes for b in batches]
                continue
            if budget.left(keep) <= 0:
                rows += [{**base, "size": s, "batch": b, "skipped": "time budget"}
                         for s in sizes for b in batches]
                continue
            t0 = time.perf_counter()
            try:
                model = case.build(device, _torch_dtype(dtype_name))
            except (RuntimeError, ValueError) as exc:
                msg = f"build failed: {str(exc).splitlines()[0][:160]}"
                rows += [{**base, "size": s, "batch": b, "skipped": msg}
                         for s in sizes for b in batches]
                continue
            log(f"{case.name} {dtype_name} on {kind}: built in {time.perf_counter() - t0:.1f}s")
            for size in sizes:
                side = size // model.downscale
                gen = torch.Generator().manual_seed(size)
                zs = torch.randn(max(batches), case.channels, side, side, generator=gen)
                singles: dict[int, str] = {}
                shape = {**base, "size": size}
                ident: dict[str, Any] = {**shape, "batch_identical": {}, "run_to_run": None}
                for batch in batches:
                    row = {**shape, "batch": batch}
                    rows.append(row)
                    if budget.left(keep) <= 0:
                        row["skipped"] = "time budget"
                        continue
                    try:
                        cell = _decode_cell(model, zs, batch, iters, warmup, device, budget, keep)
                    except torch.OutOfMemoryError:
                        row["skipped"] = "out of device memory"
                        _free(device)
                        continue
                    row.update(cell.pop("stats"))
                    outs: list[Any] = cell["outputs"]
                    if batch == 1:
                        singles = {i: _digest(o[0]) for i, o in enumerate(outs)}
                        if size not in [p["size"] for p in pixels.get(case.name, [])]:
                            pixels.setdefault(case.name, []).append(
                                {"size": size, "dtype": dtype_name, "pixels": outs[0][0]})
                    first = outs[0]
                    same = [_digest(first[i]) == singles.get(i) for i in range(batch)]
                    if batch > 1 and len(singles) >= batch:
                        ident["batch_identical"][str(batch)] = all(same)
                    if cell["repeat"] is not None:
                        r2r = cell["repeat"].tobytes() == first.tobytes()
                        ident["run_to_run"] = r2r and ident["run_to_run"] is not False
                    log(f"  {case.name} {dtype_name} {size}px b{batch}: p50 "
                        f"{row['p50_ms']:.1f} ms ({row['ms_per_image']:.1f} ms/img, "
                        f"{row['iters']} runs)")
                identity.append(ident)
            del model
            _free(device)
    return rows, identity, pixels


def _free(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _decode_cell(model: Any, zs: Any, batch: int, iters: int, warmup: int, device: Any,
                 budget: Budget, keep: float) -> dict[str, Any]:
    """Timed decodes of one (model, size, dtype, batch): stats, and the uint8 outputs.

    Batch 1 cycles over the latents (their single decodes are the identity reference);
    larger batches decode the first `batch` latents each time. The run after the first pass
    repeats its input (run-to-run identity). Stops early when another run would overrun the
    budget (the first pass and the repeat are always kept)."""
    import torch

    def inputs(i: int) -> Any:
        return zs[i % len(zs): i % len(zs) + 1] if batch == 1 else zs[:batch]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup):
        model.decode(inputs(i))
    _sync(device)
    times: list[float] = []
    outputs: list[Any] = []
    repeat = None
    # batch 1: every latent once (the references), then latent 0 again (run to run)
    first_pass = len(zs) if batch == 1 else 1
    n = max(iters, first_pass + 1)
    for i in range(n):
        t0 = time.perf_counter()
        out = model.decode(inputs(i))
        _sync(device)
        times.append(time.perf_counter() - t0)
        if i < first_pass:
            outputs.append(_uint8(out))
        elif i == first_pass:
            repeat = _uint8(out)
        if i > first_pass and budget.left(keep) < times[-1]:
            break
    stats = {
        "iters": len(times),
        "p50_ms": round(_pct(times, 50) * 1000, 2),
        "p99_ms": round(_pct(times, 99) * 1000, 2),
        "ms_per_image": round(statistics.median(times) * 1000 / batch, 2),
    }
    if device.type == "cuda":
        stats["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return {"stats": stats, "outputs": outputs, "repeat": repeat}


def measure_encode(pixels: dict[str, list[dict[str, Any]]], reps: int) -> list[dict[str, Any]]:
    """Encode time and bytes of decoded pixels with the renditions' encoders, per format."""
    from ..latent.rendition import encode, settings_for_format

    rows = []
    for model_name, items in pixels.items():
        for item in items:
            for fmt in ("PNG", "JPEG", "WEBP"):
                settings = settings_for_format(fmt)  # type: ignore[arg-type]
                times = []
                data = b""
                for _ in range(reps):
                    t0 = time.perf_counter()
                    data = encode(item["pixels"], settings)
                    times.append(time.perf_counter() - t0)
                rows.append({"model": model_name, "size": item["size"], "format": fmt.lower(),
                             "encoder": settings.encoder, "bytes": len(data),
                             "ms": round(statistics.median(times) * 1000, 2), "reps": reps})
    return rows


def run_trace(tiny: bool, weights: Path, workdir: Path, backend: str | None,
              log: Callable[[str], None]) -> dict[str, Any]:
    """A short trace replay, ImgStore vs adaptive, through gateway processes (bench trace)."""
    from ..executables import find_executable
    from . import trace_bench

    argv = ["--quick", "--configs", "imgstore,adaptive"]
    if tiny:
        argv += ["--requests", "60", "--objects", "12", "--corpus-items", "4", "--sizes", "32"]
    else:
        argv += ["--requests", "300"]
        dec = weights / "taef2_decoder.pth"
        if dec.is_file():
            cfg = workdir / "trace-model.toml"
            cfg.write_text(f'[models.taef2]\nkind = "tae"\ndecoder = "{dec}"\n')
            argv += ["--model-config", str(cfg), "--sizes", "512", "--corpus-items", "8"]
    note = None
    if backend is None and (tiny or find_executable("weed") is None):
        root = workdir / "trace-backend"
        root.mkdir(parents=True, exist_ok=True)
        backend = f"file://{root}"
        note = ("local directory backend" if tiny
                else "local directory backend (SeaweedFS `weed` not installed)")
    if backend:
        argv += ["--backend", backend]
    args = trace_bench.build_parser().parse_args(argv)
    trace_bench._defaults(args)
    (workdir / "trace").mkdir(parents=True, exist_ok=True)
    report = asyncio.run(trace_bench._run(args, workdir / "trace", log))
    out = {"configs": report["configs"], "params": report["params"], "argv": argv}
    cfgs = report["configs"]
    if "imgstore" in cfgs and "adaptive" in cfgs and cfgs["imgstore"]["mean_ms"]:
        out["adaptive_vs_imgstore_mean"] = round(
            cfgs["adaptive"]["mean_ms"] / cfgs["imgstore"]["mean_ms"], 3)
    if note:
        out["note"] = note
    return out


def run_conversion(tiny: bool, weights: Path, device_setting: str, count: int, size: int,
                   jobs: int, codecs: Sequence[str], workdir: Path,
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Latent-only admissions per second (decodes on the gateway's decode pipeline)."""
    return asyncio.run(_conversion(tiny, weights, device_setting, count, size, jobs, codecs,
                                   workdir, log))


async def _conversion(tiny: bool, weights: Path, device_setting: str, count: int, size: int,
                      jobs: int, codecs: Sequence[str], workdir: Path,
                      log: Callable[[str], None]) -> list[dict[str, Any]]:
    import torch
    from safetensors.torch import save

    from ..backends.base import ObjectMeta
    from ..config import BucketSettings, Config, DecodeSettings
    from ..decode.services import DecodeServices
    from ..latent.sidecar import parse_sidecar
    from ..objects.admission import Admitter

    dec = weights / "taef2_decoder.pth"
    if tiny:
        from .trace_bench import tiny_model

        model_id, table, channels = "tiny", tiny_model(workdir), 4
    elif dec.is_file():
        model_id, table, channels = "taef2", {"kind": "tae", "decoder": str(dec)}, 32
    else:
        model_id, table, channels = "taef2", {"kind": "tae", "random_weights": True}, 32
    cfg = Config(models={model_id: table})
    cfg.decode = DecodeSettings(device=device_setting)
    side = size // 8
    gen = torch.Generator().manual_seed(11)
    sidecars = [parse_sidecar(save({"latent": torch.randn(channels, side, side,
                                                           generator=gen).half()},
                                   metadata={"model": model_id})) for _ in range(count)]
    rows = []
    decoding = DecodeServices(cfg)
    try:
        await decoding.ready()
        admitter = Admitter(decoding)
        # one warm-up admission: model load and first-call costs are not throughput
        await admitter.admit_latent_only(BucketSettings(codec="q8"), sidecars[0], model_id,
                                         "PNG", "image/png", ObjectMeta())
        for codec in codecs:
            for n_jobs in sorted({1, jobs}):
                stats = [d.stats for d in decoding.renderer.pipeline.devices]
                before = sum(s.decoded for s in stats)
                sem = asyncio.Semaphore(n_jobs)

                async def one(sc: Any, codec: str = codec, sem: asyncio.Semaphore = sem) -> None:
                    async with sem:
                        await admitter.admit_latent_only(BucketSettings(codec=codec), sc,
                                                         model_id, "PNG", "image/png",
                                                         ObjectMeta())

                t0 = time.perf_counter()
                await asyncio.gather(*(one(sc) for sc in sidecars))
                wall = time.perf_counter() - t0
                decodes = sum(s.decoded for s in stats) - before
                rows.append({"model": model_id, "size": size, "codec": codec, "jobs": n_jobs,
                             "images": count, "seconds": round(wall, 2),
                             "images_per_s": round(count / wall, 3),
                             "decodes_per_admission": round(decodes / count, 2),
                             "device": decoding.device_kind})
                log(f"  conversion {codec} jobs={n_jobs}: {count / wall:.2f} img/s, "
                    f"{decodes / count:.1f} decodes/admission")
    finally:
        await decoding.close()
    return rows


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpu_cores": os.cpu_count(), "platform": platform.platform(),
                            "threads": torch.get_num_threads()}
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables (what docs/bench-gpu.md pastes)."""
    m = report["machine"]
    lines = [f"# s3latent bench gpu ({report['device']}{', tiny' if report['tiny'] else ''})",
             "", f"{report['finished']}; {m.get('gpu') or 'no GPU'}; torch {m['torch']}; "
             f"{m['cpu_cores']} cores; load {m.get('loadavg')}; wall {report['wall_s']} s of "
             f"a {report['budget_s']} s budget.", "", f"Command: `{report['command']}`", "",
             "## Decode latency", "",
             "| model | size | dtype | batch | device | p50 ms | p99 ms | ms/image | runs | "
             "peak MiB | note |", "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in report["decode"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['size']} | {r['dtype']} | {r['batch']} | "
                         f"{r['device']} | | | | | | skipped: {r['skipped']} |")
        else:
            lines.append(f"| {r['model']} | {r['size']} | {r['dtype']} | {r['batch']} | "
                         f"{r['device']} | {r['p50_ms']} | {r['p99_ms']} | {r['ms_per_image']} | "
                         f"{r['iters']} | {r.get('peak_mem_mib', '')} | |")
    lines += ["", "## Batch vs single, run to run (uint8 bytes)", "",
              "| model | size | dtype | device | batch == single | run to run |",
              "|---|---:|---|---|---|---|"]
    for r in report["identity"]:
        bi = ", ".join(f"b{k}: {'yes' if v else 'NO'}" for k, v in r["batch_identical"].items())
        r2r = {None: "n/a", True: "yes", False: "NO"}[r["run_to_run"]]
        lines.append(f"| {r['model']} | {r['size']} | {r['dtype']} | {r['device']} | "
                     f"{bi or 'n/a'} | {r2r} |")
    lines += ["", "## Encode (renditions' encoders)", "",
              "| model | size | format | encoder | bytes | ms |", "|---|---:|---|---|---:|---:|"]
    for r in report["encode"]:
        lines.append(f"| {r['model']} | {r['size']} | {r['format']} | {r['encoder']} | "
                     f"{r['bytes']:,} | {r['ms']} |")
    lines += ["", "## Trace replay (ImgStore vs adaptive)", ""]
    trace = report["trace"]
    if "skipped" in trace:
        lines.append(f"skipped: {trace['skipped']}")
    else:
        lines += ["| config | mean ms | p50 ms | p99 ms | image hit | latent hit |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, c in trace["configs"].items():
            lines.append(f"| {name} | {c['mean_ms']:.2f} | {c['p50_ms']:.2f} | "
                         f"{c['p99_ms']:.2f} | {c['image_hit_ratio']:.3f} | "
                         f"{c['latent_hit_ratio']:.3f} |")
        p = trace["params"]
        lines += ["", f"{p['requests']} GETs over {p['objects']} objects, model {p['model']}, "
                  f"sides {p['sizes']}, codec {p['codec']}"
                  + (f"; {trace['note']}" if trace.get("note") else "")
                  + (f"; adaptive/imgstore mean {trace['adaptive_vs_imgstore_mean']}x"
                     if "adaptive_vs_imgstore_mean" in trace else "")]
    lines += ["", "## Conversion throughput (latent-only admissions)", ""]
    conv = report["conversion"]
    if isinstance(conv, dict):
        lines.append(f"skipped: {conv['skipped']}")
    else:
        lines += ["| model | size | codec | jobs | images | s | images/s | decodes/admission | "
                  "device |", "|---|---:|---|---:|---:|---:|---:|---:|---|"]
        for r in conv:
            lines.append(f"| {r['model']} | {r['size']} | {r['codec']} | {r['jobs']} | "
                         f"{r['images']} | {r['seconds']} | {r['images_per_s']} | "
                         f"{r['decodes_per_admission']} | {r['device']} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="s3latent bench gpu",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", required=True, help="folder for results.json and results.md")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny random models, small sizes, few runs (CI; seconds on a CPU)")
    ap.add_argument("--device", default="auto", help="auto (cuda:0 if any, else cpu), cpu, cuda:N")
    ap.add_argument("--budget-s", type=float, default=None, help="default 420 (tiny: 60)")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="TAEF2 weights folder")
    ap.add_argument("--models", default=None, help="subset, comma-separated model names")
    ap.add_argument("--sizes", default=None, help="image sides (default 512,1024; tiny 32)")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--dtypes", default=",".join(DTYPE_NAMES))
    ap.add_argument("--iters", type=int, default=None, help="timed runs per cell (default 10)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2)")
    ap.add_argument("--skip", default="", help="sections to leave out: trace,conversion,encode")
    ap.add_argument("--trace-backend", default=None,
                    help="S3 endpoint or file:///dir for the trace (default: SeaweedFS if "
                         "installed, else a local folder; tiny: a local folder)")
    ap.add_argument("--conversion-images", type=int, default=None, help="default 8 (tiny: 4)")
    ap.add_argument("--conversion-size", type=int, default=None, help="default 512 (tiny: 64)")
    ap.add_argument("--jobs", type=int, default=4, help="conversions in flight (throughput)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sections within the budget; write results.json and results.md into --out."""
    args = build_parser().parse_args(argv)
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = args.tiny
    budget = Budget(args.budget_s or (60.0 if tiny else 420.0))
    if args.device == "auto":
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        from ..decode.pipeline import deterministic_cuda

        deterministic_cuda()  # the settings the gateway decodes with
    sizes = [int(s) for s in (args.sizes or ("32" if tiny else "512,1024")).split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    dtypes = [d for d in args.dtypes.split(",") if d]
    iters = args.iters or (2 if tiny else 10)
    warmup = args.warmup if args.warmup is not None else (1 if tiny else 2)
    skip = {s for s in args.skip.split(",") if s}

    def log(msg: str) -> None:
        print(f"[{budget.used():6.1f}s] {msg}", flush=True)

    log(f"device {device}, budget {budget.total_s:.0f}s, sizes {sizes}, batches {batches}, "
        f"dtypes {dtypes}")
    cases = model_cases(tiny, args.weights, args.models.split(",") if args.models else None)
    decode_rows, identity, pixels = measure_decode(cases, device, sizes, batches, dtypes, iters,
                                                   warmup, budget, log)
    report: dict[str, Any] = {
        "tiny": tiny, "device": device.type, "budget_s": budget.total_s,
        "command": "s3latent bench gpu " + " ".join(argv if argv is not None else sys.argv[2:]),
        "decode": decode_rows, "identity": identity,
    }
    report["encode"] = [] if "encode" in skip else measure_encode(pixels, 2 if tiny else 3)
    with tempfile.TemporaryDirectory(prefix="s3latent-gpubench-") as tmp:
        work = Path(tmp)
        if "trace" in skip:
            report["trace"] = {"skipped": "--skip trace"}
        elif budget.left(RESERVE["conversion"]) < 20:
            report["trace"] = {"skipped": "time budget"}
        else:
            log("trace replay: imgstore vs adaptive")
            try:
                report["trace"] = run_trace(tiny, args.weights, work, args.trace_backend, log)
            except Exception as exc:  # a failed replay must not lose the decode numbers
                report["trace"] = {"skipped": f"failed: {type(exc).__name__}: {exc}"[:300]}
        if "conversion" in skip:
            report["conversion"] = {"skipped": "--skip conversion"}
        elif budget.left() < 10:
            report["conversion"] = {"skipped": "time budget"}
        else:
            log("conversion throughput")
            count = args.conversion_images or (4 if tiny else 8)
            conv_size = args.conversion_size or (64 if tiny else 512)
            setting = str(device) if device.type == "cuda" else "cpu"
            codecs = ("q8", "auto")
            report["conversion"] = run_conversion(tiny, args.weights, setting, count, conv_size,
                                                  args.jobs, codecs, work, log)
    report["wall_s"] = round(budget.used(), 1)
    report["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report["machine"] = machine()
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "results.md").write_text(markdown(report))
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
