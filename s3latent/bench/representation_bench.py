"""Storage by representation (issue 15): latent vs AVIF vs JPEG XL on a varied corpus.

`s3latent bench storage --representations` runs this. A varied corpus of generated images
(photographs, illustrations, flat graphics, text; TAEF2 encode->decode, corpus.py) goes
through ONE gateway over SeaweedFS, as pairs into a bucket with `sidecar = "consume"` and
`representation = "smallest"`. One admission per image finds both candidates (the latent
container and the AVIF-only container, no latent inside), stores the smaller and writes both
candidates' container bytes into the backend object's metadata (`cands`), so the bench reads
latent-only, AVIF-only and the chosen row from one real gateway admission instead of
uploading each image through several gateways. The chosen row is the physical object in
SeaweedFS (the sidecar key is gone: checked). Offline anchors at equal PSNR per image (the
same min_psnr + margin, judged on decoded pixels, no rendition-length constraint): AVIF (the
encoder the gateway uses) and JPEG XL (pillow-jxl-plugin, only if importable; it is not a
dependency of s3latent). Anchors are computed while the gateway converts (all pairs of a side
are uploaded first), so the two overlap.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
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
BUCKET = "rp-consume"
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


def _wait(s3: Any, bucket: str, key: str, timeout: float = 1800.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = s3.head_object(Bucket=bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"]
        if h.get("x-s3latent-representation") == "latent":
            return h.get("x-s3latent-stored-as", "latent")
        if "refused" in h.get("x-s3latent-state", ""):
            return "refused: " + h["x-s3latent-state"]
        time.sleep(0.5)
    return "timeout"


def _candidates(metadata: dict[str, str]) -> dict[str, int]:
    """The `cands` mirror field ("latent=N avif=M") of a consumed pair's container."""
    text = next((v for k, v in metadata.items() if k.lower().endswith("cands")), "")
    return {k: int(v) for k, v in (p.split("=") for p in text.split())}


def _conversion_seconds(log_path: Path) -> dict[str, float]:
    """Image key -> seconds its conversion took, from the gateway's log lines."""
    found: dict[str, float] = {}
    pattern = re.compile(r"conversion of [^/\s]+/(\S+) \(([\d.]+) s\): admitted")
    for line in log_path.read_text(errors="replace").splitlines():
        m = pattern.search(line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


def run(sizes: dict[int, int], model_dir: Path, workdir: Path,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """`sizes`: image side -> how many corpus images at that side."""
    import boto3

    started = time.monotonic()
    items: list[CorpusItem] = []
    for size, count in sizes.items():
        items += make_corpus(workdir / f"corpus-{size}", sizes=(size,), count=count,
                             model_dir=model_dir, varied=True)
    corpus_s = round(time.monotonic() - started, 1)
    log(f"corpus: {len(items)} images in {corpus_s} s")
    config = workdir / "config.toml"
    config.write_text(
        f'[models.taef2]\nkind = "tae"\ndecoder = "{model_dir / "taef2_decoder.pth"}"\n'
        "[server]\nconversion_workers = 1\n"
        f'[buckets."*"]\nmin_psnr = {MIN_PSNR}\n'
        f'[buckets."{BUCKET}"]\ncodec = "auto"\nrepresentation = "smallest"\n'
        'sidecar = "consume"\n')
    jxl = jxl_available()
    target = MIN_PSNR + MARGIN_DB
    rows: list[dict[str, Any]] = []
    groups: dict[str, Any] = {}
    with SeaweedServer() as weed, GatewayServer(
            weed.endpoint, workdir, backend_keys=(weed.access_key, weed.secret_key),
            extra_args=["--config", str(config)]) as gw:
        def client(endpoint: str, key: str, secret: str) -> Any:
            return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                                aws_secret_access_key=secret, region_name="us-east-1")

        s3 = client(gw.endpoint, gw.access_key, gw.secret_key)
        direct = client(weed.endpoint, weed.access_key, weed.secret_key)
        s3.create_bucket(Bucket=BUCKET)
        for size in sizes:
            group = [i for i in items if i.size == size]
            t0 = time.monotonic()
            for item in group:  # the gateway converts them one by one, meanwhile ...
                s3.put_object(Bucket=BUCKET, Key=item.png.name, Body=item.png.read_bytes(),
                              ContentType="image/png")
                s3.put_object(Bucket=BUCKET, Key=item.png.name + SUFFIX,
                              Body=item.latent.read_bytes())
            anchors = {}
            for item in group:  # ... the offline anchors are found here
                anchors[item.name] = _anchors(item, target, jxl)
            anchors_s = time.monotonic() - t0
            for item in group:
                rows.append(_row(s3, direct, item, anchors[item.name]))
                log(json.dumps(rows[-1]))
            seconds = _conversion_seconds(gw.log_path)
            for row in rows:
                row.setdefault("conversion_s", seconds.get(row["key"]))
            groups[str(size)] = {"images": len(group),
                                 "wall_s": round(time.monotonic() - t0, 1),
                                 "anchors_wall_s": round(anchors_s, 1)}
    return {"rows": rows, "summary": summarise(rows), "groups": groups,
            "corpus_s": corpus_s, "min_psnr": MIN_PSNR,
            "margin_db": MARGIN_DB, "jxl": jxl, "avif": avif.decoder_version(),
            "avif_encoder": avif.encoder_version(), "seconds": round(time.monotonic() - started),
            "bucket": {"sidecar": "consume", "representation": "smallest", "codec": "auto"},
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "cpus": _cpus(), "loadavg_end": list(os.getloadavg())}}


def _anchors(item: CorpusItem, target: float, jxl: str | None) -> dict[str, Any]:
    """Offline AVIF (and JPEG XL) at equal PSNR for one image."""
    pixels, _ = decode_image_bytes(item.png.read_bytes())
    out: dict[str, Any] = {}
    anchor = _coarsest(_avif_encode, pixels, target)
    out["avif_anchor_bytes"] = anchor[0] if anchor else None
    out["avif_anchor_quality"] = anchor[1] if anchor else None
    if jxl:
        # libjxl through the plugin: quality 100 (lossless) is refused with effort set, and
        # 0 is out of its lossy range
        anchor = _coarsest(_jxl_encode, pixels, target, qmin=1, qmax=99)
        out["jxl_anchor_bytes"] = anchor[0] if anchor else None
        out["jxl_anchor_quality"] = anchor[1] if anchor else None
    return out


def _row(s3: Any, direct: Any, item: CorpusItem, anchors: dict[str, Any]) -> dict[str, Any]:
    """One image once converted: what the gateway stored, and what it chose between."""
    key = item.png.name
    state = _wait(s3, BUCKET, key)
    stored = direct.head_object(Bucket=BUCKET, Key=key)
    chosen = int(stored["ContentLength"])
    cands = _candidates(stored.get("Metadata", {}))
    try:
        s3.head_object(Bucket=BUCKET, Key=key + SUFFIX)
        sidecar_gone = False
    except Exception as exc:  # botocore ClientError 404
        sidecar_gone = "404" in str(exc)
    served = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    png = item.png.read_bytes()
    pixels, _ = decode_image_bytes(png)
    latent = cands.get("latent")
    avif_only = cands.get("avif")
    if state.startswith("refused"):  # both keys kept as uploaded
        chosen += int(direct.head_object(Bucket=BUCKET, Key=key + SUFFIX)["ContentLength"])
    return {
        "image": item.name, "key": key, "size": item.size, "category": item.source,
        "png_bytes": item.png_bytes, "sidecar_bytes": item.latent_bytes,
        "stored_as": state, "sidecar_consumed": sidecar_gone,
        "latent_bytes": latent, "avif_bytes": avif_only, "chosen_bytes": chosen,
        "served_psnr": round(psnr(decode_image_bytes(served)[0], pixels), 3),
        "served_same_length": len(served) == len(png),
        "min_latent_or_avif": min(v for v in (latent, avif_only) if v is not None)
        if (latent or avif_only) else None,
        **anchors,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _pass(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals per image side: bytes over PNG, and whether the issue's targets hold.

    Targets: chosen <= min(latent-only, AVIF-only) on every image and in total; at 1024²,
    chosen at least 90% below PNG in total."""
    out: dict[str, Any] = {}
    for size in sorted({r["size"] for r in rows}):
        rs = [r for r in rows if r["size"] == size]
        png = sum(r["png_bytes"] for r in rs)

        def total(col: str, rs: list[dict[str, Any]] = rs) -> int | None:
            if any(r.get(col) is None for r in rs):
                return None
            return sum(r[col] for r in rs)

        def ratio(col: str, png: int = png) -> float | None:
            value = total(col)
            return None if value is None else round(value / png, 4)

        chosen, lat, av = total("chosen_bytes"), total("latent_bytes"), total("avif_bytes")
        every = all(r["min_latent_or_avif"] is not None
                    and r["chosen_bytes"] <= r["min_latent_or_avif"] for r in rs)
        in_total = chosen is not None and all(
            chosen <= t for t in (lat, av, total("min_latent_or_avif")) if t is not None)
        entry = {
            "images": len(rs),
            "png_bytes": png,
            "latent_x_png": ratio("latent_bytes"),
            "avif_alone_x_png": ratio("avif_bytes"),
            "chosen_x_png": ratio("chosen_bytes"),
            "min_per_image_x_png": ratio("min_latent_or_avif"),
            "avif_anchor_x_png": ratio("avif_anchor_bytes"),
            "jxl_anchor_x_png": ratio("jxl_anchor_bytes"),
            "stored_as_avif": sum(r["stored_as"] == "avif" for r in rs),
            "avif_smaller_than_latent": sum(
                r["avif_bytes"] is not None and r["latent_bytes"] is not None
                and r["avif_bytes"] < r["latent_bytes"] for r in rs),
            "refused": sum(r["stored_as"].startswith("refused") for r in rs),
            "sidecars_consumed": sum(bool(r["sidecar_consumed"]) for r in rs),
            "target_chosen_le_min_every_image": every,
            "target_chosen_le_min_in_total": in_total,
        }
        if size == 1024:
            entry["target_90pct_below_png"] = chosen is not None and chosen <= 0.1 * png
        out[str(size)] = entry
    return out


def table(results: dict[str, Any]) -> str:
    """Per-image rows, totals and the targets with pass/fail, as markdown."""
    def x(v: int | None, png: int) -> str:
        return "n/a" if v is None else f"{v / png:.3f}"

    lines = ["| image | side | PNG bytes | latent-only | AVIF-only | chosen (stored as) | "
             "AVIF anchor (q) | JPEG XL anchor (q) | chosen <= min |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["rows"]:
        png = r["png_bytes"]
        jxl = (f"{x(r['jxl_anchor_bytes'], png)} ({r['jxl_anchor_quality']})"
               if r.get("jxl_anchor_bytes") is not None else "n/a")
        avq = (f"{x(r['avif_anchor_bytes'], png)} ({r['avif_anchor_quality']})"
               if r.get("avif_anchor_bytes") is not None else "n/a")
        ok = r["min_latent_or_avif"] is not None and r["chosen_bytes"] <= r["min_latent_or_avif"]
        lines.append(f"| {r['image']} | {r['size']} | {png:,} | {x(r['latent_bytes'], png)} | "
                     f"{x(r['avif_bytes'], png)} | {x(r['chosen_bytes'], png)} "
                     f"({r['stored_as'][:12]}) | {avq} | {jxl} | {_pass(ok)} |")
    lines += ["", "| side | images | latent-only | AVIF-only | min per image | chosen | "
              "AVIF anchor | JPEG XL anchor | stored as AVIF |", "|" + "---|" * 9]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}x"

    for size, s in results["summary"].items():
        lines.append(f"| {size}² | {s['images']} | {f(s['latent_x_png'])} | "
                     f"{f(s['avif_alone_x_png'])} | {f(s['min_per_image_x_png'])} | "
                     f"{f(s['chosen_x_png'])} | {f(s['avif_anchor_x_png'])} | "
                     f"{f(s['jxl_anchor_x_png'])} | {s['stored_as_avif']}/{s['images']} |")
    lines.append("")
    for size, s in results["summary"].items():
        lines.append(f"- {size}²: chosen <= min(latent-only, AVIF-only) on every image: "
                     f"{_pass(s['target_chosen_le_min_every_image'])}; in total: "
                     f"{_pass(s['target_chosen_le_min_in_total'])}")
        if "target_90pct_below_png" in s:
            lines.append(f"- {size}²: chosen at least 90% below PNG in total "
                         f"({f(s['chosen_x_png'])}): {_pass(s['target_90pct_below_png'])}")
    return "\n".join(lines)
