"""Trace replay of the read path (LatentBox-style): image store vs latent store, static vs adaptive.

One run, one trace, one memory budget, one backend. Four configurations, each a fresh
gateway process (cold cache) over the same backend (and a fifth, ``avif``, on request):

- ``imgstore``: images stored as plain objects (a bucket with ``convert=false``, no
  sidecars uploaded, nothing decoded); the cache holds images only (alpha=1).
- ``latent_only``: latent containers; the cache holds latents only (alpha=0).
- ``static``: latent containers; the budget split half/half (alpha=0.5), fixed.
- ``adaptive``: as ``static`` but the resizer moves alpha every ``window`` requests.
- ``avif`` (``--representations``, issue 15): the same pairs uploaded into a bucket with
  ``representation = "avif"`` (the image held as AVIF, read with one AV1 decode and no VAE),
  with the cache settings of ``adaptive``.

The three latent configurations read the same converted bucket (loaded and converted
once by a loader gateway without a cache, then stopped), so their backend bytes are the
same objects. The trace's GETs are replayed closed-loop by ``--concurrency`` workers in
trace order with a thin async S3 client; latency is the client's, request to last byte.
Hit ratios come from the gateway's ``s3latent_read_seconds_count`` deltas, backend bytes
from listing the backend directly (physical sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import trace_common as tc
from .gateway_bench import S3Client, S3HttpError, percentile
from .servers import GatewayServer

CONFIGS = ("imgstore", "latent_only", "static", "adaptive")
AVIF_CONFIG = "avif"
ALL_CONFIGS = (*CONFIGS, AVIF_CONFIG)
# --representations: ImgStore, latent-held and AVIF-held objects under the same cache settings
REPRESENTATION_CONFIGS = ("imgstore", "adaptive", AVIF_CONFIG)
# name -> (cache alpha, adaptive)
CACHE_SETTINGS: dict[str, tuple[float, bool]] = {
    "imgstore": (1.0, False),
    "latent_only": (0.0, False),
    "static": (0.5, False),
    "adaptive": (0.5, True),
    AVIF_CONFIG: (0.5, True),  # as `adaptive`: only the representation differs
}
IMG_BUCKET_PREFIX = "trace-img-"
LAT_BUCKET_PREFIX = "trace-lat-"
AVIF_BUCKET_PREFIX = "trace-avif-"
WARMUP_KEY = "warmup/warmup.png"
TINY_MODEL_ID = "tiny"


@dataclass(frozen=True)
class CorpusObject:
    """An image and the latent sidecar it was decoded from."""

    png: bytes
    sidecar: bytes


@dataclass(frozen=True)
class Promise:
    """What HEAD says a GET of an object returns: its length and (as the ETag) its MD5."""

    size: int
    etag: str


class BodyMismatch(RuntimeError):
    """A GET answered other bytes than HEAD promised: the benchmark stops, it never times
    wrong answers."""


@dataclass
class ReplayResult:
    """What one configuration's replay measured."""

    latencies: list[float]
    wall_s: float
    paths: dict[str, float]
    samples: list[dict[str, float]] = field(default_factory=list)
    verified: int = 0  # bodies whose length and MD5 were checked against their Promise


class TraceClient(S3Client):
    """S3Client plus HEAD (conversion state) and unsigned /metrics."""

    async def head(self, bucket: str, key: str) -> dict[str, str]:
        url, headers = self._signed("HEAD", f"/{bucket}/{key}")
        async with self.session.head(url, headers=headers) as r:
            if r.status != 200:
                raise S3HttpError(f"HEAD {key}: {r.status}")
            return {k.lower(): v for k, v in r.headers.items()}

    async def put_typed(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        """PUT with a Content-Type: the read cache keeps plain objects only if they are images."""
        url, headers = self._signed(
            "PUT",
            f"/{bucket}/{key}",
            {"Content-Length": str(len(body)), "Content-Type": content_type},
        )
        async with self.session.put(url, data=body, headers=headers) as r:
            answer = await r.read()
            if r.status != 200:
                raise S3HttpError(f"PUT {key}: {r.status} {answer[:300]!r}")

    async def get_body(self, bucket: str, key: str) -> tuple[bytes, str]:
        """GET: (the body, read to its last byte; the ETag header)."""
        url, headers = self._signed("GET", f"/{bucket}/{key}")
        async with self.session.get(url, headers=headers) as r:
            body = await r.read()
            if r.status != 200:
                raise S3HttpError(f"GET {key}: {r.status} {body[:300]!r}")
            return body, r.headers.get("ETag", "").strip('"')

    async def metrics(self) -> str:
        async with self.session.get(self.endpoint + "/metrics") as r:
            return await r.text()


# -- corpus -------------------------------------------------------------------------------


def _png(pixels: Any) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _decode_random(
    model_id: str, table: dict[str, Any], count: int, sizes: Sequence[int], seed: int
) -> list[CorpusObject]:
    """Images that are exactly the decoder's output for random latents (admission passes)."""
    import torch
    from safetensors.torch import save

    from ..models.registry import ModelRegistry

    model = ModelRegistry.from_config({model_id: table}).get(model_id)
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(count):
        side = sizes[i % len(sizes)] // model.downscale
        latent = torch.randn(model.latent_channels, side, side, generator=gen).half()
        with torch.no_grad():
            decoded = model.decode(latent.float()[None])
        pixels = decoded.clamp(0, 1).mul(255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        sidecar = save({"latent": latent.contiguous()}, metadata={"model": model_id})
        items.append(CorpusObject(_png(pixels), sidecar))
    return items


def tiny_model(workdir: Path, seed: int = 7) -> dict[str, Any]:
    """A randomly initialised TAESD-shaped decoder saved as a state dict (no weights needed)."""
    import torch

    from ..models.tae import TAE_ARCHS, build_tae_decoder

    torch.manual_seed(seed)
    path = workdir / "tiny_decoder.pth"
    torch.save(build_tae_decoder(TAE_ARCHS["taesd"]).state_dict(), path)
    return {"kind": "tae", "arch": "taesd", "decoder": str(path)}


def build_corpus(
    model_id: str,
    table: dict[str, Any],
    workdir: Path,
    count: int,
    sizes: Sequence[int],
    seed: int,
) -> list[CorpusObject]:
    """TAEF2 round trips of photographs when its encoder is there, else random-latent decodes."""
    decoder = Path(str(table.get("decoder", "")))
    encoder = decoder.parent / "taef2_encoder.pth"
    if model_id == "taef2" and decoder.is_file() and encoder.is_file():
        from .corpus import make_corpus

        made = make_corpus(
            workdir / "corpus", sizes=tuple(sizes), count=count, model_dir=decoder.parent
        )
        return [CorpusObject(i.png.read_bytes(), i.latent.read_bytes()) for i in made]
    return _decode_random(model_id, table, count, sizes, seed)


# -- trace ---------------------------------------------------------------------------------


def load_trace(args: argparse.Namespace) -> list[str]:
    """The trace's GET keys in order: synthetic (seeded) or read from a CSV file."""
    from . import trace as tr

    if args.trace == "synthetic":
        optional = {"half_life": args.half_life, "arrival_rate": args.arrival_rate}
        requests: Iterable[Any] = tr.generate(
            requests=args.requests,
            objects=args.objects,
            zipf=args.zipf,
            seed=args.seed,
            **{k: v for k, v in optional.items() if v is not None},
        )
    else:
        requests = tr.read_csv(Path(args.trace))
    keys = [str(r.key) for r in requests]
    if args.trace != "synthetic" and args.requests:
        keys = keys[: args.requests]
    return keys


def map_keys(keys: Sequence[str], n_items: int) -> tuple[list[str], dict[str, int]]:
    """Trace keys -> object keys (first-appearance order) and object key -> corpus index.

    Deterministic: the same trace and corpus size give the same objects and contents.
    """
    names: dict[str, str] = {}
    content: dict[str, int] = {}
    out = []
    for k in keys:
        name = names.get(k)
        if name is None:
            name = names[k] = f"t/{len(names):06d}.png"
            content[name] = zlib.crc32(k.encode()) % n_items
        out.append(name)
    return out, content


# -- configuration files --------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def gateway_config(
    model_id: str,
    table: dict[str, Any],
    img_bucket: str,
    *,
    codec: str,
    memory: int,
    alpha: float,
    adaptive: bool,
    window: int,
    alpha_step: float,
    sample_rate: float = 1.0,
    avif_bucket: str | None = None,
) -> str:
    """TOML for one gateway: the model, the plain image bucket, the AVIF bucket (if any), the
    cache split."""
    lines = [f"[models.{model_id}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    lines += [
        '[buckets."*"]',
        f"codec = {_toml_value(codec)}",
        f'[buckets."{img_bucket}"]',
        "convert = false",
    ]
    if avif_bucket is not None:
        # pairs, as in the latent bucket: only the stored representation differs
        lines += [f'[buckets."{avif_bucket}"]', 'representation = "avif"']
    lines += [
        "[cache]",
        f"memory = {memory}",
        f"alpha = {alpha!r}",
        f"adaptive = {_toml_value(adaptive)}",
        f"window = {window}",
        f"alpha_step = {alpha_step!r}",
        f"sample_rate = {sample_rate!r}",
        "[server]",
        "sweep_interval_s = 2.0",
    ]
    return "\n".join(lines) + "\n"


# -- metrics ---------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Read-path counters by path, plus alpha, from Prometheus text (missing -> absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "s3latent_read_seconds_count":
                out[s.labels.get("path", "")] = s.value
            elif s.name == "s3latent_cache_alpha":
                out["alpha"] = s.value
            elif s.name == "s3latent_cache_alpha_estimate_seconds":
                out[f"estimate_ms@{s.labels.get('alpha', '')}"] = round(s.value * 1000, 3)
    return out


# -- load ---------------------------------------------------------------------------------


async def _bounded(jobs: Iterable[Callable[[], Any]], concurrency: int) -> None:
    it = iter(jobs)

    async def worker() -> None:
        for job in it:
            await job()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def load_objects(
    client: TraceClient,
    img_bucket: str,
    lat_bucket: str,
    objects: dict[str, CorpusObject],
    *,
    wait_s: float,
    log: Callable[[str], None],
    avif_bucket: str | None = None,
) -> dict[str, int]:
    """Images into the plain bucket, pairs into the latent (and AVIF) bucket; wait for every
    conversion. Returns how the AVIF bucket's objects were stored (`x-s3latent-stored-as`
    counts; empty without one): an image whose AVIF fails the policy is stored as a latent."""
    converted = [lat_bucket] + ([avif_bucket] if avif_bucket is not None else [])
    for bucket in (img_bucket, *converted):
        await client.create_bucket(bucket)
    t0 = time.perf_counter()

    def put(key: str, obj: CorpusObject) -> Callable[[], Any]:
        async def job() -> None:
            await client.put_typed(img_bucket, key, obj.png, "image/png")
            for bucket in converted:
                await client.put_typed(bucket, key, obj.png, "image/png")
                await client.put_typed(
                    bucket, key + ".latent.safetensors", obj.sidecar, "application/octet-stream"
                )

        return job

    await _bounded((put(k, o) for k, o in objects.items()), 8)
    log(f"  uploaded {len(objects)} objects in {time.perf_counter() - t0:.1f}s; converting")
    pending = {(b, k) for b in converted for k in objects}
    stored_as: dict[str, int] = {}
    deadline = time.monotonic() + wait_s
    refused: list[str] = []
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} objects not converted within {wait_s:.0f}s")

        def check(bucket: str, key: str) -> Callable[[], Any]:
            async def job() -> None:
                h = await client.head(bucket, key)
                if h.get("x-s3latent-representation") == "latent":
                    pending.discard((bucket, key))
                    if bucket == avif_bucket:
                        kind = h.get("x-s3latent-stored-as", "latent")
                        stored_as[kind] = stored_as.get(kind, 0) + 1
                elif "refused" in h.get("x-s3latent-state", ""):
                    refused.append(f"{bucket}/{key}: {h['x-s3latent-state']}")

            return job

        await _bounded([check(b, k) for b, k in sorted(pending)], 8)
        if refused:
            raise RuntimeError("conversion refused: " + "; ".join(refused[:3]))
        if pending:
            await asyncio.sleep(1.0)
    log(
        f"  all {len(objects)} converted after {time.perf_counter() - t0:.1f}s"
        + (f"; AVIF bucket stored as {stored_as}" if avif_bucket is not None else "")
    )
    return stored_as


async def promises(
    client: TraceClient, bucket: str, keys: Iterable[str], expected: dict[str, bytes] | None = None
) -> dict[str, Promise]:
    """What HEAD promises for each key (length and ETag); with `expected`, each promise must
    also be those bytes (the uploaded image, for the plain bucket)."""
    out: dict[str, Promise] = {}

    def check(key: str) -> Callable[[], Any]:
        async def job() -> None:
            h = await client.head(bucket, key)
            p = Promise(int(h["content-length"]), h["etag"].strip('"'))
            if expected is not None:
                want = expected[key]
                if (p.size, p.etag) != (len(want), hashlib.md5(want).hexdigest()):
                    raise BodyMismatch(f"HEAD {bucket}/{key}: {p} is not the uploaded object")
            out[key] = p

        return job

    await _bounded([check(k) for k in sorted(set(keys))], 8)
    return out


# -- replay --------------------------------------------------------------------------------


async def replay(
    client: TraceClient,
    bucket: str,
    keys: Sequence[str],
    *,
    concurrency: int,
    sample_every: int,
    promised: dict[str, Promise],
) -> ReplayResult:
    """GET `keys` in order with `concurrency` workers; sample alpha every `sample_every` GETs.

    Each body is checked against `promised` after its latency is taken (the client's hashing
    is not timed); any difference stops the replay (BodyMismatch)."""
    await client.get(bucket, WARMUP_KEY)  # model load and connections, not in the stats
    before = parse_metrics(await client.metrics())
    latencies: list[float] = []
    samples: list[dict[str, float]] = []
    sampling: list[asyncio.Task[None]] = []
    t_start = time.perf_counter()

    async def sample(done: int, window_mean: float) -> None:
        m = parse_metrics(await client.metrics())
        samples.append(
            {
                "requests": done,
                "t_s": round(time.perf_counter() - t_start, 3),
                "alpha": m.get("alpha", float("nan")),
                "window_mean_ms": round(window_mean * 1000, 3),
            }
        )

    it = iter(keys)
    verified = 0

    async def worker() -> None:
        nonlocal verified
        for key in it:
            t0 = time.perf_counter()
            body, etag = await client.get_body(bucket, key)
            latencies.append(time.perf_counter() - t0)
            want = promised[key]
            got = Promise(len(body), hashlib.md5(body).hexdigest())
            if got != want or etag != want.etag:
                raise BodyMismatch(
                    f"GET {bucket}/{key}: {got.size} bytes, md5 {got.etag}, ETag {etag}; "
                    f"HEAD promised {want.size} bytes, ETag {want.etag}"
                )
            verified += 1
            n = len(latencies)
            if n % sample_every == 0:
                window = latencies[-sample_every:]
                sampling.append(asyncio.create_task(sample(n, sum(window) / len(window))))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t_start
    await asyncio.gather(*sampling)
    after = parse_metrics(await client.metrics())
    paths = {
        p: after.get(p, 0.0) - before.get(p, 0.0)
        for p in ("image_hit", "latent_hit", "miss", "plain")
    }
    samples.sort(key=lambda s: s["requests"])
    return ReplayResult(latencies, wall, paths, samples, verified)


def summarise(result: ReplayResult, backend_bytes: int) -> dict[str, Any]:
    """The per-configuration numbers of the JSON report."""
    lat = result.latencies
    n = len(lat)
    return {
        "mean_ms": round(sum(lat) / n * 1000, 3),
        "p50_ms": round(percentile(lat, 50) * 1000, 3),
        "p99_ms": round(percentile(lat, 99) * 1000, 3),
        "image_hit_ratio": round(result.paths["image_hit"] / n, 4),
        "latent_hit_ratio": round(result.paths["latent_hit"] / n, 4),
        "backend_bytes": backend_bytes,
        "requests": n,
        "verified_bodies": result.verified,
        "wall_s": round(result.wall_s, 3),
        "paths": {k: int(v) for k, v in result.paths.items()},
    }


# -- backend listing -----------------------------------------------------------------------


def backend_usage(backend: str, keys: tuple[str, str] | None, bucket: str) -> dict[str, int]:
    """Physical bytes and objects in `bucket`, listed on the backend itself.

    `sidecar_*` counts what is left at the sidecar keys (stubs after conversion).
    """
    usage = {"bytes": 0, "objects": 0, "sidecar_bytes": 0, "sidecar_objects": 0}

    def add(key: str, size: int) -> None:
        usage["bytes"] += size
        usage["objects"] += 1
        if key.endswith(".latent.safetensors"):
            usage["sidecar_bytes"] += size
            usage["sidecar_objects"] += 1

    if backend.startswith("file://"):
        # s3latent's local backend: <root>/buckets/<bucket>/<key path>.~o (+ .bucket.json)
        root = Path(backend[len("file://") :]) / "buckets" / bucket
        for p in root.rglob("*.~o"):
            add(p.name[: -len(".~o")], p.stat().st_size)
        return usage
    import boto3
    from botocore.config import Config as BotoConfig

    s3 = boto3.client(
        "s3",
        endpoint_url=backend,
        aws_access_key_id=keys[0] if keys else None,
        aws_secret_access_key=keys[1] if keys else None,
        region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}),
    )
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            add(o["Key"], int(o["Size"]))
    return usage


# -- report --------------------------------------------------------------------------------


def ratios(configs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """adaptive / best static (latent_only or static) and adaptive / imgstore, mean and p99."""
    out: dict[str, float] = {}
    a = configs["adaptive"]
    for metric in ("mean_ms", "p99_ms"):
        best = min(configs["latent_only"][metric], configs["static"][metric])
        out[f"adaptive_vs_best_static_{metric}"] = round(a[metric] / best, 3)
        out[f"adaptive_vs_imgstore_{metric}"] = round(a[metric] / configs["imgstore"][metric], 3)
    img = configs["imgstore"]["backend_bytes"]
    out["latent_vs_imgstore_backend_bytes"] = round(a["backend_bytes"] / img, 4) if img else 0.0
    return out


def _over(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def representation_ratios(configs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Issue 15: latent-held (`adaptive`) and AVIF-held (`avif`) objects over ImgStore, and
    AVIF over latent, under the same cache settings: mean, p50, p99 and backend bytes."""
    out: dict[str, float | None] = {}
    pairs = (("latent", "adaptive", "imgstore"), ("avif", AVIF_CONFIG, "imgstore"),
             ("avif", AVIF_CONFIG, "adaptive"))
    for label, name, base in pairs:
        c, b = configs[name], configs[base]
        against = "imgstore" if base == "imgstore" else "latent"
        for metric in ("mean_ms", "p50_ms", "p99_ms", "backend_bytes"):
            out[f"{label}_vs_{against}_{metric}"] = _over(c[metric], b[metric])
    return out


def table(configs: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the configurations that ran, in a fixed order; with ImgStore among
    them, each one's mean, p50 and p99 over ImgStore's."""
    img = configs.get("imgstore")
    head = "| config | mean ms | p50 ms | p99 ms | image hit | latent hit | backend bytes |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if img is not None:
        head += " mean / ImgStore | p50 / ImgStore | p99 / ImgStore |"
        rule += "---:|---:|---:|"
    rows = [head, rule]
    for name in [n for n in ALL_CONFIGS if n in configs]:
        c = configs[name]
        row = (
            f"| {name} | {c['mean_ms']:.2f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | "
            f"{c['image_hit_ratio']:.3f} | {c['latent_hit_ratio']:.3f} | {c['backend_bytes']:,} |"
        )
        if img is not None:
            for metric in ("mean_ms", "p50_ms", "p99_ms"):
                r = _over(c[metric], img[metric])
                row += " n/a |" if r is None else f" {r:.3f} |"
        rows.append(row)
    return "\n".join(rows)


def plot_alpha(path: Path, samples: Sequence[dict[str, float]], title: str) -> Path:
    """alpha and per-window mean latency over the adaptive replay."""
    from .plot import Panel, line_plot

    x = [s["requests"] for s in samples]
    return line_plot(
        path,
        x,
        [
            Panel("alpha", {"alpha (image share)": [s["alpha"] for s in samples]}, 0.0, 1.0),
            Panel("latency ms", {"window mean": [s["window_mean_ms"] for s in samples]}, 0.0),
        ],
        title=title,
        xlabel="requests replayed",
    )


# -- main ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="s3latent bench trace", description=__doc__.splitlines()[0] if __doc__ else None
    )
    tc.add_trace_arguments(ap, quick_help="small run (about 2 minutes on 2 cores)")
    ap.add_argument(
        "--memory",
        default="auto",
        help="cache budget, e.g. 4MiB; auto: 10%% of the replayed images' bytes",
    )
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument(
        "--window", type=int, default=None, help="resizer window (requests) for the adaptive config"
    )
    ap.add_argument("--alpha-step", type=float, default=0.05)
    ap.add_argument(
        "--sample-rate",
        type=float,
        default=1.0,
        help="share of keys the resizer's shadows replay (the gateway's default is 0.1; a "
        "trace of a few hundred objects needs them all for a stable estimate)",
    )
    ap.add_argument(
        "--codec",
        default=None,
        help="latent codec of the latent bucket (default: q8 with --quick, else auto)",
    )
    ap.add_argument(
        "--configs",
        default=None,
        help=f"subset to run, of {', '.join(ALL_CONFIGS)} (default: the first four; the JSON "
        "ratios need all four)",
    )
    ap.add_argument(
        "--representations",
        action="store_true",
        help="issue 15: replay against ImgStore, latent-held and AVIF-held objects (configs "
        f"{','.join(REPRESENTATION_CONFIGS)}; the AVIF bucket has representation = \"avif\")",
    )
    tc.add_output_arguments(
        ap,
        plot_help="PNG of alpha and window latency during the adaptive run",
        workdir_help="keep files here (default: a temp dir, removed)",
    )
    return ap


QUICK = tc.TraceDefaults(requests=400, objects=60, sizes="32,48,64", model_sizes="256",
                         corpus_items=24)
FULL = tc.TraceDefaults(requests=6000, objects=1000, sizes="64,96,128", model_sizes="256",
                        corpus_items=32)


def _defaults(args: argparse.Namespace) -> None:
    tc.apply_trace_defaults(args, QUICK, FULL)
    if args.codec is None:
        args.codec = "q8" if args.quick else "auto"
    if args.window is None:
        args.window = max(25, args.requests // 12)
    if args.configs is None:
        args.configs = ",".join(REPRESENTATION_CONFIGS if args.representations else CONFIGS)
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in ALL_CONFIGS]
    if unknown or not names:
        raise SystemExit(f"unknown configuration(s) {unknown}; known: {', '.join(ALL_CONFIGS)}")


async def _run(
    args: argparse.Namespace, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    sizes = [int(s) for s in str(args.sizes).split(",") if s]
    if args.model_config:
        model_id, table = tc.model_from_file(args.model_config)
    else:
        model_id, table = TINY_MODEL_ID, tiny_model(workdir)
    log(f"trace: {args.trace}")
    trace_keys = load_trace(args)
    t0 = time.perf_counter()
    corpus = build_corpus(model_id, table, workdir, args.corpus_items, sizes, args.seed)
    log(
        f"corpus: {len(corpus)} images ({model_id}, sides {sizes}) in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    keys, content = map_keys(trace_keys, len(corpus))
    objects = {k: corpus[i] for k, i in content.items()}
    objects[WARMUP_KEY] = corpus[0]
    image_bytes = sum(len(corpus[content[k]].png) for k in keys)
    distinct_bytes = sum(len(o.png) for k, o in objects.items() if k != WARMUP_KEY)
    auto = max(64 * 1024, distinct_bytes // 10)
    memory = auto if args.memory == "auto" else tc.parse_size(args.memory)
    log(
        f"trace: {len(keys)} GETs over {len(content)} objects "
        f"({distinct_bytes:,} image bytes); cache {memory:,} bytes"
    )

    run_id = uuid.uuid4().hex[:8]
    img_bucket, lat_bucket = IMG_BUCKET_PREFIX + run_id, LAT_BUCKET_PREFIX + run_id
    names = [c for c in ALL_CONFIGS if c in args.configs.split(",")]
    # the AVIF bucket costs an AVIF search per object: only when its config runs
    avif_bucket = AVIF_BUCKET_PREFIX + run_id if AVIF_CONFIG in names else None
    bucket_of = {name: lat_bucket for name in CONFIGS} | {
        "imgstore": img_bucket,
        AVIF_CONFIG: avif_bucket or "",
    }
    with tc.backend_for(args, workdir) as (backend, bkeys, started):

        def config_file(name: str, alpha: float, adaptive: bool, mem: int) -> Path:
            path = workdir / f"{name}.toml"
            path.write_text(
                gateway_config(
                    model_id,
                    table,
                    img_bucket,
                    codec=args.codec,
                    memory=mem,
                    alpha=alpha,
                    adaptive=adaptive,
                    window=args.window,
                    alpha_step=args.alpha_step,
                    sample_rate=args.sample_rate,
                    avif_bucket=avif_bucket,
                )
            )
            return path

        loader_cfg = config_file("loader", 0.5, False, 0)
        log("loading through a gateway without a cache")
        with GatewayServer(
            backend, workdir, backend_keys=bkeys, extra_args=["--config", str(loader_cfg)]
        ) as gw:
            async with TraceClient(gw.endpoint, gw.access_key, gw.secret_key) as client:
                stored_as = await load_objects(
                    client,
                    img_bucket,
                    lat_bucket,
                    objects,
                    wait_s=max(300.0, len(objects) * (20.0 if avif_bucket else 10.0)),
                    log=log,
                    avif_bucket=avif_bucket,
                )
                # What every GET must answer: HEAD's length and ETag (the rendition's MD5
                # for converted objects, the uploaded PNG's for ImgStore).
                pngs = {k: o.png for k, o in objects.items()}
                promised = {
                    b: await promises(client, b, keys, pngs if b == img_bucket else None)
                    for b in {bucket_of[n] for n in names}
                }
        sizes_on_backend = {
            "imgstore": backend_usage(backend, bkeys, img_bucket),
            "latent": backend_usage(backend, bkeys, lat_bucket),
        }
        if avif_bucket is not None:
            sizes_on_backend["avif"] = backend_usage(backend, bkeys, avif_bucket)
        results: dict[str, dict[str, Any]] = {}
        samples: list[dict[str, float]] = []
        for name in names:
            alpha, adaptive = CACHE_SETTINGS[name]
            cfg = config_file(name, alpha, adaptive, memory)
            bucket = bucket_of[name]
            with GatewayServer(
                backend, workdir, backend_keys=bkeys, extra_args=["--config", str(cfg)]
            ) as gw:
                async with TraceClient(
                    gw.endpoint, gw.access_key, gw.secret_key, connections=args.concurrency + 2
                ) as client:
                    res = await replay(
                        client,
                        bucket,
                        keys,
                        concurrency=args.concurrency,
                        sample_every=max(10, args.window // 2),
                        promised=promised[bucket],
                    )
            usage = {"imgstore": "imgstore", AVIF_CONFIG: "avif"}.get(name, "latent")
            stored = sizes_on_backend[usage]["bytes"]
            results[name] = summarise(res, stored)
            if name == "adaptive":
                samples = res.samples
            c = results[name]
            log(
                f"  {name:12s} mean {c['mean_ms']:8.2f} ms  p50 {c['p50_ms']:8.2f}  "
                f"p99 {c['p99_ms']:8.2f}  image hit {c['image_hit_ratio']:.3f}  "
                f"latent hit {c['latent_hit_ratio']:.3f}  ({c['wall_s']:.1f}s)"
            )
    report: dict[str, Any] = {
        "configs": results,
        "params": {
            **tc.trace_params(
                args,
                requests=len(keys),
                objects=len(content),
                model=model_id,
                sizes=sizes,
                corpus_items=len(corpus),
                backend=backend,
                started=started,
            ),
            "memory": memory,
            "concurrency": args.concurrency,
            "window": args.window,
            "alpha_step": args.alpha_step,
            "sample_rate": args.sample_rate,
            "replayed_image_bytes": image_bytes,
            "distinct_image_bytes": distinct_bytes,
        },
        "backend_usage": sizes_on_backend,
        "machine": tc.machine(),
        "adaptive_samples": samples,
    }
    if avif_bucket is not None:
        # how the AVIF bucket's objects are held (a failed AVIF search leaves a latent)
        report["avif_stored_as"] = stored_as
    if all(c in results for c in CONFIGS):
        report["ratios"] = ratios(results)
    if all(c in results for c in REPRESENTATION_CONFIGS):
        report["representation_ratios"] = representation_ratios(results)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`s3latent bench trace [--quick] ...`; prints a table, optionally JSON and a plot."""
    args = build_parser().parse_args(argv)
    _defaults(args)
    report = tc.run_in_workdir(args, "trace", _run)
    if report is None:
        return 1
    print()
    print(table(report["configs"]))
    for k, v in {**report.get("ratios", {}), **report.get("representation_ratios", {})}.items():
        print(f"{k}: {v}")
    if "avif_stored_as" in report:
        print(f"AVIF bucket stored as: {report['avif_stored_as']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.plot and report["adaptive_samples"]:
        plot_alpha(
            Path(args.plot),
            report["adaptive_samples"],
            f"adaptive: alpha and window mean latency ({report['params']['model']}, "
            f"{report['params']['requests']} GETs, cache {report['params']['memory']:,} B)",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
