"""`s3latent bench engines`: how fast, how big and how deterministic each CPU engine decodes TAEF2.

Why: on a CPU gateway nearly all of a conversion and of a latent read is the TAEF2 decode
(issue 14.2). An engine may only replace today's for new conversions if its bytes are stable
per render profile, so each engine is judged on time, peak memory and three identities of the
uint8 output (what a rendition is encoded from):

- run to run: the same latent decoded twice in one process, and once more in a fresh process
  (what a restarted gateway would serve);
- batch to batch: the first image of a batch of two vs the same latent decoded alone (the
  decoder called on the batch directly, without the gateway's one-at-a-time loop);
- vs today: equal to the bytes today's engine (eager, channels-last, ``torch`` default threads)
  produces, i.e. could it serve objects converted before without changing their ETags?

Engines: torch eager NCHW and channels-last (today's), each thread setting asked for, torch.compile
(inductor, channels-last), and ONNX Runtime's CPU provider on the decoder exported with
``torch.onnx.export`` (optional: ``pip install 's3latent[engines]'``; left out with a note when
not installed). Times are measured side by side in one process, in rounds that rotate the engine
order, so load from other processes on a shared machine hits them alike; the reported ratio is
the median per-round ratio to today's engine. Peak memory is measured in a fresh subprocess per
(engine, size): its peak RSS during one decode (VmHWM, reset after loading) over its RSS before.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .corpus import default_model_dir
from .host import cpu_model

DEFAULT_WEIGHTS = default_model_dir()  # <repo>/../shared/models/taef2
TODAY = "eager-cl"


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> None:
    """Start the peak-RSS mark (VmHWM) afresh, so loading the model does not count (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_decoder(weights: Path) -> Any:
    """TAEF2 as the gateway loads it (channels-last, fp32, CPU)."""
    from ..models.tae import load_tae

    return load_tae("taef2", weights / "taef2_decoder.pth", model_id="taef2")


def export_onnx(model: Any, path: Path) -> float:
    """The decoder as ONNX with dynamic batch and sides; returns the export time."""
    import torch

    decoder = model.decoder.to(memory_format=torch.contiguous_format)
    z = torch.zeros(1, model.latent_channels, 16, 16)
    started = time.perf_counter()
    try:
        torch.onnx.export(decoder, (z,), str(path), dynamo=False, input_names=["z"],
                          output_names=["x"], opset_version=17,
                          dynamic_axes={"z": {0: "b", 2: "h", 3: "w"},
                                        "x": {0: "b", 2: "H", 3: "W"}})
    finally:
        decoder.to(memory_format=torch.channels_last)
    return time.perf_counter() - started


def ort_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with a fixed thread count and no spin-waiting (a shared
    machine: spinning pools would bill their idle time to whoever runs next)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build_engines(model: Any, names: Sequence[str], onnx_path: Path | None,
                  default_threads: int) -> dict[str, Callable[[Any], Any]]:
    """Engine name -> function of latents [B, 32, h, w] to float pixels [B, 3, 8h, 8w].

    Names: eager-nchw, eager-cl (today), eager-cl-tN, compile, ort, ort-tN (N threads; without
    -tN the torch default, `default_threads`)."""
    import torch

    engines: dict[str, Callable[[Any], Any]] = {}
    z_in = model._decoder_input  # scale/shift/layout exactly as the gateway feeds the decoder

    def torch_engine(fn: Callable[[Any], Any], threads: int, layout: Any) -> Callable[[Any], Any]:
        def run(z: Any) -> Any:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return fn(z_in(z).contiguous(memory_format=layout))
        return run

    for name in names:
        base, sep, t = name.rpartition("-t")
        if not (sep and t.isdigit()):
            base, t = name, str(default_threads)
        threads = int(t)
        if base == "eager-cl":
            engines[name] = torch_engine(model.decoder, threads, torch.channels_last)
        elif base == "eager-nchw":
            nchw = _nchw_copy(model)
            engines[name] = torch_engine(nchw, threads, torch.contiguous_format)
        elif base == "compile":
            engines[name] = torch_engine(torch.compile(model.decoder, dynamic=False), threads,
                                         torch.channels_last)
        elif base == "ort":
            if onnx_path is None:
                continue
            session = ort_session(onnx_path, threads)

            def run(z: Any, session: Any = session) -> Any:
                x = z_in(z).contiguous().numpy()
                return torch.from_numpy(session.run(None, {"z": x})[0])
            engines[name] = run
        else:
            raise ValueError(f"unknown engine {name!r}")
    return engines


def _nchw_copy(model: Any) -> Any:
    import copy

    import torch

    return copy.deepcopy(model.decoder).to(memory_format=torch.contiguous_format)


def _u8(x: Any) -> Any:
    from ..decode.pipeline import pixels_to_uint8

    return pixels_to_uint8(x).numpy()


def _digest(arr: Any) -> str:
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


def latents(size: int, count: int = 2, seed: int = 0) -> Any:
    import torch

    side = size // 8
    return torch.randn(count, 32, side, side, generator=torch.Generator().manual_seed(seed + size))


def study_size(engines: dict[str, Callable[[Any], Any]], size: int, rounds: int,
               batch_check: bool, log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Time, run-to-run and batch identity of every engine at one size, side by side."""
    import numpy as np

    zs = latents(size)
    z0 = zs[:1]
    res: dict[str, dict[str, Any]] = {n: {"times_s": []} for n in engines}
    first: dict[str, Any] = {}
    for name, fn in engines.items():  # first call: compile/allocation costs, reported apart
        t0 = time.perf_counter()
        first[name] = _u8(fn(z0))
        res[name]["first_call_s"] = round(time.perf_counter() - t0, 3)
        log(f"  {size}px {name}: first call {res[name]['first_call_s']} s")
    names = list(engines)
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        this: dict[str, float] = {}
        for name in order:
            t0 = time.perf_counter()
            out = engines[name](z0)
            this[name] = time.perf_counter() - t0
            res[name]["times_s"].append(round(this[name], 4))
            if r == 0:
                res[name]["run_to_run"] = bool(np.array_equal(_u8(out), first[name]))
        for name in names:
            if TODAY in this:
                ratios[name].append(this[name] / this[TODAY])
    ref = first.get(TODAY)
    for name in names:
        rr = res[name]
        rr["median_s"] = round(statistics.median(rr["times_s"]), 4) if rr["times_s"] else None
        rr["ratio_vs_today"] = round(statistics.median(ratios[name]), 3) if ratios[name] else None
        rr["digest"] = _digest(first[name])
        if ref is not None:
            diff = np.abs(first[name].astype(np.int16) - ref.astype(np.int16))
            rr["same_bytes_as_today"] = bool(not diff.any())
            rr["bytes_differing_vs_today_pct"] = round(100.0 * float((diff > 0).mean()), 3)
            rr["max_abs_diff_vs_today"] = int(diff.max())
        if batch_check:
            batch = _u8(engines[name](zs))
            rr["batch_identical"] = bool(np.array_equal(batch[:1], first[name]))
        log(f"  {size}px {name}: median {rr['median_s']} s, x{rr['ratio_vs_today']} vs today, "
            f"run-to-run {rr.get('run_to_run')}, batch {rr.get('batch_identical', 'n/a')}, "
            f"same as today {rr.get('same_bytes_as_today')}")
    return res


def _child(args: argparse.Namespace) -> int:
    """One decode with one engine in a fresh process: peak RSS and the output digest."""
    import torch

    model = load_decoder(Path(args.weights))
    onnx_path = Path(args.onnx) if args.onnx else None
    fn = build_engines(model, [args.child], onnx_path, torch.get_num_threads())[args.child]
    z0 = latents(args.size)[:1]
    import gc

    gc.collect()
    _reset_peak_rss()
    baseline = _status_mib("VmRSS")
    out = _u8(fn(z0))
    print(json.dumps({"baseline_rss_mib": round(baseline),
                      "peak_rss_mib": round(_status_mib("VmHWM")), "digest": _digest(out)}))
    return 0


def memory(engine: str, size: int, weights: Path, onnx_path: Path | None) -> dict[str, Any]:
    """Peak RSS of one decode in a fresh process, and its output digest (cross-process)."""
    cmd = [sys.executable, "-m", "s3latent.bench.engine_study", "--child", engine,
           "--size", str(size), "--weights", str(weights)]
    if onnx_path is not None:
        cmd += ["--onnx", str(onnx_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    got["decode_mib"] = got["peak_rss_mib"] - got["baseline_rss_mib"]
    return got


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cores": os.cpu_count(), "platform": platform.platform(),
                            "torch_threads": torch.get_num_threads(),
                            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if cpu := cpu_model():
        info["cpu"] = cpu
    return info


def markdown(report: dict[str, Any]) -> str:
    lines = ["| size | engine | median s | vs today | first call s | peak MiB (decode) | "
             "run to run | fresh process | batch == single | same bytes as today |",
             "|---:|---|---:|---:|---:|---:|---|---|---|---|"]

    def yn(v: Any) -> str:
        return {True: "yes", False: "**no**", None: "n/a"}.get(v, str(v))

    for size, engines in report["sizes"].items():
        for name, r in engines.items():
            mem = r.get("memory", {})
            same = yn(r.get("same_bytes_as_today"))
            if r.get("same_bytes_as_today") is False:
                same += (f" ({r['bytes_differing_vs_today_pct']}% differ, max "
                         f"{r['max_abs_diff_vs_today']})")
            fresh = yn(mem["digest"] == r["digest"]) if "digest" in mem else "n/a"
            lines.append(f"| {size} | {name} | {r['median_s']} | {r['ratio_vs_today']}x | "
                         f"{r['first_call_s']} | {mem.get('decode_mib', 'n/a')} | "
                         f"{yn(r.get('run_to_run'))} | {fresh} | "
                         f"{yn(r.get('batch_identical'))} | {same} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="s3latent bench engines", description=__doc__.splitlines()[0]
                                 if __doc__ else None)
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="TAEF2 weights folder")
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--engines", default="eager-nchw,eager-cl,eager-cl-t1,compile,ort,ort-t1")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per size")
    ap.add_argument("--compile-max", type=int, default=512,
                    help="largest size torch.compile is tried at (compiling is slow)")
    ap.add_argument("--batch-max", type=int, default=512,
                    help="largest size the batch-of-two identity is checked at")
    ap.add_argument("--large-min", type=int, default=1024,
                    help="sizes from this one up run only --large-engines (slow on a CPU)")
    ap.add_argument("--large-engines", default="eager-nchw,eager-cl,eager-cl-t1,ort,ort-t1")
    ap.add_argument("--memory", default="eager-nchw,eager-cl,ort",
                    help="engines whose peak RSS is measured in a fresh process ('' for none)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--md", help="write the markdown table here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    import torch

    if not (args.weights / "taef2_decoder.pth").is_file():
        print(f"TAEF2 weights not found in {args.weights}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, flush=True)

    names = [n for n in args.engines.split(",") if n]
    notes: list[str] = []
    if not ort_available() and any(n.startswith("ort") for n in names):
        names = [n for n in names if not n.startswith("ort")]
        notes.append("onnxruntime not installed (pip install 's3latent[engines]'): ort left out")
    report: dict[str, Any] = {"machine": machine(), "sizes": {}, "notes": notes,
                              "command": "s3latent bench engines "
                              + " ".join(argv if argv is not None else sys.argv[2:])}
    default_threads = torch.get_num_threads()
    model = load_decoder(args.weights)
    wall0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="s3latent-engines-") as tmp:
        onnx_path: Path | None = None
        if any(n.startswith("ort") for n in names):
            onnx_path = Path(tmp) / "taef2_decoder.onnx"
            report["onnx_export_s"] = round(export_onnx(model, onnx_path), 1)
            log(f"exported ONNX in {report['onnx_export_s']} s")
        for size in [int(s) for s in args.sizes.split(",") if s]:
            here = [n for n in names if not (n.startswith("compile") and size > args.compile_max)]
            if len(here) < len(names):
                notes.append(f"{size}px: torch.compile left out (--compile-max {args.compile_max})")
            if size >= args.large_min:
                large = args.large_engines.split(",")
                left = [n for n in here if n not in large]
                here = [n for n in here if n in large]
                if left:
                    notes.append(f"{size}px: {', '.join(left)} left out (--large-engines)")
            if size > args.batch_max:
                notes.append(f"{size}px: batch identity not checked (--batch-max {args.batch_max})")
            engines = build_engines(model, here, onnx_path, default_threads)
            log(f"{size}px: {', '.join(engines)}")
            res = study_size(engines, size, args.rounds, size <= args.batch_max, log)
            torch.set_num_threads(default_threads)
            for name in [n for n in args.memory.split(",") if n in res]:
                res[name]["memory"] = memory(name, size, args.weights, onnx_path)
                log(f"  {size}px {name}: memory {res[name]['memory']}")
            report["sizes"][str(size)] = res
            del engines
    report["wall_s"] = round(time.perf_counter() - wall0, 1)
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = markdown(report)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
