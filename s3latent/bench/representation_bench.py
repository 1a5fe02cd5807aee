"""Storage by representation (issue 15): latent vs AVIF vs JPEG XL on a varied corpus.

`s3latent bench storage --representations` runs this. A varied corpus of generated images
(photographs, illustrations, flat graphics, text; TAEF2 encode->decode, corpus.py) goes
through a gateway over SeaweedFS twice: as pairs into a bucket with the default
`representation = "smallest"` (what it stores for a pair: the latent container + stub), and
as the PNG alone into a bucket with `convert_plain` (the image as an AVIF container, or the
PNG where AVIF fails the policy or is not smaller). Physical bytes are read from SeaweedFS.
Offline anchors at equal PSNR per image (the same min_psnr + margin, judged on decoded
pixels, no rendition-length constraint): AVIF (the encoder the gateway uses) and JPEG XL
(pillow-jxl-plugin, only if importable; it is not a dependency of s3latent).
"""

from __future__ import annotations

import io
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..latent import avif
from ..latent.fidelity import decode_image_bytes, psnr
from .corpus import CorpusItem, make_corpus
from .servers import GatewayServer, SeaweedServer

SUFFIX = ".latent.safetensors"
MIN_PSNR, MARGIN_DB = 40.0, 0.3


def jxl_available() -> str | None:
    """The pillow-jxl-plugin version when importable, else None."""
    try:
        from importlib import metadata

        import pillow_jxl  # noqa: F401

        return metadata.version("pillow-jxl-plugin")
    except Exception:
        return None


def _coarsest(encode: Callable[[np.ndarray, int], bytes], pixels: np.ndarray,
              target: float, qmin: int = 0, qmax: int = 100) -> tuple[int, int, float] | None:
    """(bytes, quality, psnr) of the lowest quality qmin..qmax meeting `target` (bisection)."""
    def judge(q: int) -> tuple[int, float] | None:
        data = encode(pixels, q)
        value = psnr(decode_image_bytes_any(data), pixels)
        return (len(data), value) if value >= target else None

    top = judge(qmax)
    if top is None:
        return None
    lo, hi, best = qmin - 1, qmax, (top[0], qmax, top[1])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        got = judge(mid)
        if got is None:
            lo = mid
        else:
            hi, best = mid, (got[0], mid, got[1])
    return best


def decode_image_bytes_any(data: bytes) -> np.ndarray:
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return avif.decode(data)
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _avif_encode(pixels: np.ndarray, q: int) -> bytes:
    return avif.encode(pixels, avif.AvifParams(q))


def _jxl_encode(pixels: np.ndarray, q: int) -> bytes:
    import pillow_jxl  # noqa: F401

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JXL", quality=q, effort=7)
    return out.getvalue()


def _wait(s3: Any, bucket: str, key: str, timeout: float = 900.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = s3.head_object(Bucket=bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"]
        if h.get("x-s3latent-representation") == "latent":
            return h.get("x-s3latent-stored-as", "latent")
        if "refused" in h.get("x-s3latent-state", ""):
            return "refused: " + h["x-s3latent-state"]
        time.sleep(0.5)
    return "timeout"


def run(sizes: dict[int, int], model_dir: Path, workdir: Path,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """`sizes`: image side -> how many corpus images at that side."""
    import boto3

    items: list[CorpusItem] = []
    for size, count in sizes.items():
        items += make_corpus(workdir / f"corpus-{size}", sizes=(size,), count=count,
                             model_dir=model_dir, varied=True)
    log(f"corpus: {len(items)} images")
    config = workdir / "config.toml"
    config.write_text(
        f'[models.taef2]\nkind = "tae"\ndecoder = "{model_dir / "taef2_decoder.pth"}"\n'
        "[server]\nconversion_workers = 1\n"
        f'[buckets."*"]\nmin_psnr = {MIN_PSNR}\n'
        '[buckets."rp-pair"]\ncodec = "auto"\n'
        '[buckets."rp-plain"]\nconvert_plain = true\nconvert_plain_after = 0\n')
    jxl = jxl_available()
    target = MIN_PSNR + MARGIN_DB
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with SeaweedServer() as weed, GatewayServer(
            weed.endpoint, workdir, backend_keys=(weed.access_key, weed.secret_key),
            extra_args=["--config", str(config)]) as gw:
        def client(endpoint: str, key: str, secret: str) -> Any:
            return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                                aws_secret_access_key=secret, region_name="us-east-1")

        s3 = client(gw.endpoint, gw.access_key, gw.secret_key)
        direct = client(weed.endpoint, weed.access_key, weed.secret_key)
        for b in ("rp-pair", "rp-plain"):
            s3.create_bucket(Bucket=b)
        for item in items:
            t0 = time.monotonic()
            png = item.png.read_bytes()
            key = item.png.name
            s3.put_object(Bucket="rp-plain", Key=key, Body=png, ContentType="image/png")
            s3.put_object(Bucket="rp-pair", Key=key, Body=png, ContentType="image/png")
            s3.put_object(Bucket="rp-pair", Key=key + SUFFIX, Body=item.latent.read_bytes())
            pair_state = _wait(s3, "rp-pair", key)
            plain_state = _wait(s3, "rp-plain", key)

            def size_of(bucket: str, k: str) -> int:
                return int(direct.head_object(Bucket=bucket, Key=k)["ContentLength"])

            pair_bytes = size_of("rp-pair", key) + size_of("rp-pair", key + SUFFIX)
            plain_bytes = size_of("rp-plain", key)
            served = s3.get_object(Bucket="rp-plain", Key=key)["Body"].read()
            pixels, _ = decode_image_bytes(png)
            row: dict[str, Any] = {
                "image": item.name, "size": item.size, "category": item.source,
                "png_bytes": item.png_bytes, "sidecar_bytes": item.latent_bytes,
                "latent_state": pair_state, "latent_bytes": pair_bytes,
                "avif_state": plain_state, "avif_bytes": plain_bytes,
                "avif_psnr": round(psnr(decode_image_bytes(served)[0], pixels), 3),
            }
            anchor = _coarsest(_avif_encode, pixels, target)
            row["avif_anchor_bytes"] = anchor[0] if anchor else None
            row["avif_anchor_quality"] = anchor[1] if anchor else None
            if jxl:
                # libjxl through the plugin: quality 100 (lossless) is refused with effort
                # set, and 0 is out of its lossy range
                anchor = _coarsest(_jxl_encode, pixels, target, qmin=1, qmax=99)
                row["jxl_anchor_bytes"] = anchor[0] if anchor else None
                row["jxl_anchor_quality"] = anchor[1] if anchor else None
            # What the gateway stores for the pair ("smallest"): the latent container + stub.
            row["chosen_bytes"] = pair_bytes
            row["min_latent_or_avif"] = min(pair_bytes, plain_bytes)
            row["seconds"] = round(time.monotonic() - t0, 1)
            rows.append(row)
            log(json.dumps(row))
    return {"rows": rows, "summary": summarise(rows), "min_psnr": MIN_PSNR,
            "margin_db": MARGIN_DB, "jxl": jxl, "avif": avif.decoder_version(),
            "avif_encoder": avif.encoder_version(), "seconds": round(time.monotonic() - started),
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "cpus": _cpus()}}


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals per image side: bytes over PNG, and whether the issue's target holds."""
    out: dict[str, Any] = {}
    for size in sorted({r["size"] for r in rows}):
        rs = [r for r in rows if r["size"] == size]
        png = sum(r["png_bytes"] for r in rs)

        def ratio(col: str, rs: list[dict[str, Any]] = rs, png: int = png) -> float | None:
            if any(r.get(col) is None for r in rs):
                return None
            return round(sum(r[col] for r in rs) / png, 4)

        out[str(size)] = {
            "images": len(rs),
            "latent_x_png": ratio("latent_bytes"),
            "avif_alone_x_png": ratio("avif_bytes"),
            "chosen_x_png": ratio("chosen_bytes"),
            "min_per_image_x_png": ratio("min_latent_or_avif"),
            "avif_anchor_x_png": ratio("avif_anchor_bytes"),
            "jxl_anchor_x_png": ratio("jxl_anchor_bytes"),
            "avif_smaller_than_latent": sum(r["avif_bytes"] < r["latent_bytes"] for r in rs),
            "chosen_at_most_min_every_image": all(
                r["chosen_bytes"] <= r["min_latent_or_avif"] for r in rs),
            "avif_refused": sum(r["avif_state"].startswith("refused") for r in rs),
            "latent_refused": sum(r["latent_state"].startswith("refused") for r in rs),
        }
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["| side | images | latent pair (= chosen) | AVIF alone (gateway) | "
             "min(latent, AVIF) per image | AVIF anchor | JPEG XL anchor | AVIF < latent |",
             "|" + "---|" * 8]
    for size, s in results["summary"].items():
        def f(v: Any) -> str:
            return "n/a" if v is None else f"{v:.3f}x"
        lines.append(f"| {size}² | {s['images']} | {f(s['latent_x_png'])} | "
                     f"{f(s['avif_alone_x_png'])} | {f(s['min_per_image_x_png'])} | "
                     f"{f(s['avif_anchor_x_png'])} | {f(s['jxl_anchor_x_png'])} | "
                     f"{s['avif_smaller_than_latent']}/{s['images']} |")
    return "\n".join(lines)
