"""`s3latent bench encoders`: stage 3 encoders (PNG, JPEG, WebP) measured against Pillow.

Why: every rendition read re-encodes decoded pixels, and on a GPU the encode can
cost more than the decode. This measures, single-threaded, the median encode
time and the output size of Pillow (what renditions use today) and of the fast
encoders installable from PyPI as self-contained wheels, on images that look
like generated ones, and checks what a rendition needs beyond speed: the same
bytes on every call and in a fresh process, lossless PNG, JPEG/WebP pixels
close to Pillow's at the same quality.

Images: by default the offline corpus (`s3latent.bench.corpus`): skimage's
public-domain photographs encoded and decoded by TAEF2 (a real VAE decode, so
the texture and noise are a generated image's), at 512 and 1024 px. Without the
TAEF2 weights the same photographs are used as they are, plus smooth synthetic
images; the content is recorded in the results either way. A candidate whose
package is not installed is listed as missing, not measured.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("VIPS_CONCURRENCY", "1")  # single thread, before pyvips loads libvips

import numpy as np
from PIL import Image

from .host import cpu_model

Encode = Callable[[np.ndarray], bytes]


@dataclass(frozen=True)
class Candidate:
    """One encoder configuration and the Pillow configuration it is compared with."""

    name: str
    fmt: str  # PNG, JPEG, WEBP
    dist: str  # the PyPI distribution ("Pillow" for the baseline family)
    options: str
    make: Callable[[], Encode]  # imports lazily; raises ImportError when missing
    baseline: str


def _pillow(fmt: str, **kw: Any) -> Callable[[], Encode]:
    def make() -> Encode:
        def enc(px: np.ndarray) -> bytes:
            out = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(px), "RGB").save(out, fmt, **kw)
            return out.getvalue()
        return enc
    return make


def _fpng() -> Encode:
    import fpng

    return lambda px: bytes(fpng.from_ndarray(np.ascontiguousarray(px)))


def _spng(level: int) -> Callable[[], Encode]:
    def make() -> Encode:
        import pyspng

        if not hasattr(pyspng, "encode"):
            raise ImportError("this pyspng decodes only (pyspng-seunglab encodes)")
        return lambda px: bytes(pyspng.encode(np.ascontiguousarray(px), compress_level=level))
    return make


def _imagecodecs(func: str, **kw: Any) -> Callable[[], Encode]:
    def make() -> Encode:
        import imagecodecs

        fn = getattr(imagecodecs, func)
        return lambda px: bytes(fn(np.ascontiguousarray(px), **kw))
    return make


def _simplejpeg(quality: int) -> Encode:
    import simplejpeg

    return lambda px: bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(px), quality, "RGB",
                                                   "420"))


def _opencv(ext: str, *params: int) -> Callable[[], Encode]:
    def make() -> Encode:
        import cv2

        cv2.setNumThreads(1)

        def enc(px: np.ndarray) -> bytes:
            ok, buf = cv2.imencode(ext, np.ascontiguousarray(px[..., ::-1]), list(params))
            if not ok:
                raise RuntimeError("cv2.imencode failed")
            return buf.tobytes()
        return enc
    return make


def _vips(method: str, **kw: Any) -> Callable[[], Encode]:
    def make() -> Encode:
        import pyvips

        pyvips.cache_set_max(0)
        pyvips.concurrency_set(1)

        def enc(px: np.ndarray) -> bytes:
            h, w, _ = px.shape
            image = pyvips.Image.new_from_memory(np.ascontiguousarray(px).data, w, h, 3, "uchar")
            return bytes(getattr(image, method)(**kw))
        return enc
    return make


def _cv2_consts() -> dict[str, int]:
    # cv2's flag values, fixed since OpenCV 3 (so candidates can be listed without cv2).
    return {"PNG_COMPRESSION": 16, "JPEG_QUALITY": 1, "JPEG_OPTIMIZE": 3, "WEBP_QUALITY": 64}


def candidates() -> list[Candidate]:
    """Every configuration measured; baselines first within each format."""
    c = _cv2_consts()
    png6, png1 = "pillow-png6", "pillow-png1"
    jpg, jpg_opt, webp = "pillow-jpeg90", "pillow-jpeg90-opt", "pillow-webp90"
    return [
        Candidate(png6, "PNG", "Pillow", "compress_level=6 (project default)",
                  _pillow("PNG", compress_level=6), png6),
        Candidate(png1, "PNG", "Pillow", "compress_level=1", _pillow("PNG", compress_level=1),
                  png6),
        Candidate("fpng", "PNG", "fpng", "fpng one-pass (fixed filter + Huffman)", _fpng, png6),
        Candidate("pyspng-6", "PNG", "pyspng-seunglab", "libspng level 6", _spng(6), png6),
        Candidate("pyspng-1", "PNG", "pyspng-seunglab", "libspng level 1", _spng(1), png1),
        Candidate("imagecodecs-png6", "PNG", "imagecodecs", "libpng level 6",
                  _imagecodecs("png_encode", level=6), png6),
        Candidate("imagecodecs-png1", "PNG", "imagecodecs", "libpng level 1",
                  _imagecodecs("png_encode", level=1), png1),
        Candidate("opencv-png6", "PNG", "opencv-python-headless", "IMWRITE_PNG_COMPRESSION=6",
                  _opencv(".png", c["PNG_COMPRESSION"], 6), png6),
        Candidate("opencv-png1", "PNG", "opencv-python-headless", "IMWRITE_PNG_COMPRESSION=1",
                  _opencv(".png", c["PNG_COMPRESSION"], 1), png1),
        Candidate("pyvips-png6", "PNG", "pyvips-binary", "pngsave compression=6",
                  _vips("pngsave_buffer", compression=6), png6),
        Candidate(jpg, "JPEG", "Pillow", "q90 4:2:0 optimize=False (RenderSettings default)",
                  _pillow("JPEG", quality=90, subsampling=2, optimize=False), jpg),
        Candidate(jpg_opt, "JPEG", "Pillow", "q90 4:2:0 optimize=True (settings_for_upload)",
                  _pillow("JPEG", quality=90, subsampling=2, optimize=True), jpg),
        Candidate("simplejpeg", "JPEG", "simplejpeg", "q90 4:2:0 (no optimize option)",
                  lambda: _simplejpeg(90), jpg),
        Candidate("imagecodecs-jpeg90", "JPEG", "imagecodecs", "jpeg8 q90 4:2:0",
                  _imagecodecs("jpeg8_encode", level=90, subsampling="420"), jpg),
        Candidate("imagecodecs-jpeg90-opt", "JPEG", "imagecodecs", "jpeg8 q90 4:2:0 optimize",
                  _imagecodecs("jpeg8_encode", level=90, subsampling="420", optimize=True),
                  jpg_opt),
        Candidate("opencv-jpeg90", "JPEG", "opencv-python-headless", "q90 (4:2:0 default)",
                  _opencv(".jpg", c["JPEG_QUALITY"], 90), jpg),
        Candidate("opencv-jpeg90-opt", "JPEG", "opencv-python-headless", "q90 optimize",
                  _opencv(".jpg", c["JPEG_QUALITY"], 90, c["JPEG_OPTIMIZE"], 1), jpg_opt),
        Candidate("pyvips-jpeg90", "JPEG", "pyvips-binary", "jpegsave Q=90 subsample on",
                  _vips("jpegsave_buffer", Q=90, subsample_mode="on"), jpg),
        Candidate(webp, "WEBP", "Pillow", "q90 method=4 exact (RenderSettings default)",
                  _pillow("WEBP", quality=90, method=4, exact=True), webp),
        Candidate("imagecodecs-webp90", "WEBP", "imagecodecs", "q90 method=4",
                  _imagecodecs("webp_encode", level=90, lossless=False, method=4), webp),
        Candidate("opencv-webp90", "WEBP", "opencv-python-headless", "IMWRITE_WEBP_QUALITY=90",
                  _opencv(".webp", c["WEBP_QUALITY"], 90), webp),
        Candidate("pyvips-webp90", "WEBP", "pyvips-binary", "webpsave Q=90 effort=4",
                  _vips("webpsave_buffer", Q=90, effort=4), webp),
    ]


# -- images -----------------------------------------------------------------

def load_images(sizes: Sequence[int], count: int, corpus: Path | None
                ) -> tuple[list[tuple[str, np.ndarray]], str]:
    """(name, pixels) per image and a sentence saying what the content is."""
    from .corpus import _center_square, _synthetic, default_model_dir, make_corpus, source_images

    model_dir = default_model_dir()
    if corpus is None and (model_dir / "taef2_decoder.pth").is_file():
        with tempfile.TemporaryDirectory(prefix="encoder-study-") as tmp:
            make_corpus(Path(tmp), tuple(sizes), count * len(sizes), model_dir)
            return load_images(sizes, count, Path(tmp))
    if corpus is not None and (corpus / "index.json").is_file():
        index = json.loads((corpus / "index.json").read_text())
        per_size = {size: [i for i in index if i["size"] == size][:count] for size in sizes}
        images = [(item["name"], np.asarray(Image.open(item["png"]).convert("RGB")))
                  for item in index if item in per_size.get(item["size"], [])]
        sources = sorted({item["source"] for item in index})
        return images, ("TAEF2 decodes (encode+decode round trip) of " + ", ".join(sources)
                        + ", centre-cropped and resized with Lanczos")
    images = []
    for i, (name, _source, img) in enumerate(source_images()):
        if i >= count:
            break
        for size in sizes:
            images.append((f"{name}_{size}", np.asarray(_center_square(img, size))))
    for size in sizes:
        images.append((f"synthetic_{size}", np.asarray(_synthetic(0, size))))
    return images, ("photographs as they are (no TAEF2 weights: not VAE decodes) plus one "
                    "smooth synthetic image per size")


# -- measuring --------------------------------------------------------------

def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _time_interleaved(encoders: dict[str, Encode], px: np.ndarray, repeats: int
                      ) -> dict[str, tuple[list[float], bytes, bool]]:
    """name -> (seconds per call, output, every call gave the same bytes).

    Rounds visit every encoder in a rotating order, so load from other work on a
    shared machine falls on all of them alike; an encoder faster than 50 ms is
    timed several times per round (up to 10) for enough samples.
    """
    first = {name: enc(px) for name, enc in encoders.items()}  # warm-up: imports, tables
    inner = {}
    for name, enc in encoders.items():
        started = time.perf_counter()
        enc(px)
        inner[name] = int(min(10, max(1, 0.05 // max(time.perf_counter() - started, 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in encoders}
    same = dict.fromkeys(encoders, True)
    names = list(encoders)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(inner[name]):
                started = time.perf_counter()
                out = encoders[name](px)
                samples[name].append(time.perf_counter() - started)
                same[name] = same[name] and out == first[name]
    return {name: (samples[name], first[name], same[name]) for name in encoders}


def hashes_in_fresh_process(names: Sequence[str], image: Path) -> dict[str, str]:
    """sha256 of each candidate's output for `image` (.npy), from a new interpreter."""
    code = ("import json,sys,numpy as np;from s3latent.bench import encoder_study as s;"
            "print(json.dumps(s._hashes(sys.argv[1].split(','), np.load(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, ",".join(names), str(image)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _hashes(names: Sequence[str], px: np.ndarray) -> dict[str, str]:
    by_name = {c.name: c for c in candidates()}
    return {n: hashlib.sha256(by_name[n].make()(px)).hexdigest() for n in names}


def installed_bytes(dist: str) -> int | None:
    """Installed footprint of a distribution (its RECORD), bundled shared libraries included."""
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        return None
    total = 0
    for f in files:
        path = Path(str(f.locate()))
        if path.is_file():
            total += path.stat().st_size
    return total


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def run(images: list[tuple[str, np.ndarray]], repeats: int, only: set[str] | None
        ) -> dict[str, Any]:
    """Measure every installed candidate on every image; see the module docstring."""
    chosen = [c for c in candidates() if only is None or c.name in only or c.name == c.baseline]
    encoders: dict[str, Encode] = {}
    missing: dict[str, str] = {}
    for c in chosen:
        try:
            encoders[c.name] = c.make()
        except ImportError as exc:
            missing[c.name] = str(exc)
    rows: list[dict[str, Any]] = []
    outputs: dict[tuple[str, str], bytes] = {}
    for image_name, px in images:
        timed = _time_interleaved(encoders, px, repeats)
        for c in chosen:
            if c.name not in encoders:
                continue
            times, data, same = timed[c.name]
            outputs[(image_name, c.name)] = data
            decoded = _decode(data)
            row: dict[str, Any] = {
                "image": image_name, "size": f"{px.shape[1]}x{px.shape[0]}",
                "candidate": c.name, "format": c.fmt, "baseline": c.baseline,
                "median_ms": round(statistics.median(times) * 1000, 3),
                "min_ms": round(min(times) * 1000, 3), "samples": len(times),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "repeat_identical": same,
                "lossless": bool(np.array_equal(decoded, px)),
                "psnr_vs_source": round(_psnr(decoded, px), 3),
            }
            base = outputs.get((image_name, c.baseline))
            if base is not None:
                row["same_bytes_as_baseline"] = data == base
                row["psnr_vs_baseline_decode"] = round(_psnr(decoded, _decode(base)), 3)
            rows.append(row)
            print(f"  {image_name:18s} {c.name:24s} {row['median_ms']:9.2f} ms "
                  f"{len(data):9d} B", file=sys.stderr, flush=True)
    _fresh_process_check(images, rows, list(encoders))
    dists = sorted({c.dist for c in chosen})
    return {
        "rows": rows,
        "missing": missing,
        "packages": {d: {"version": _version(d), "installed_bytes": installed_bytes(d)}
                     for d in dists},
    }


def _fresh_process_check(images: list[tuple[str, np.ndarray]], rows: list[dict[str, Any]],
                         names: list[str]) -> None:
    """Mark each row with whether a new interpreter produced the same bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        for image_name, px in images:
            path = Path(tmp) / f"{image_name}.npy"
            np.save(path, px)
            fresh = hashes_in_fresh_process(names, path)
            for row in rows:
                if row["image"] == image_name:
                    row["fresh_process_identical"] = fresh.get(row["candidate"]) == row["sha256"]


UPLOAD_LEVELS = (0, 1, 4, 6, 9)  # Pillow compress_level of a PNG upload (ComfyUI writes 4)


def upload_fit(images: list[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Would fpng's PNG fit a Pillow PNG upload of the same pixels at each level?

    A rendition has to be padded to the upload's exact length, which needs at
    least 12 spare bytes in PNG; otherwise conversion falls back to Pillow.
    (A real rendition's pixels differ a little from the upload's; same pixels here.)
    """
    try:
        fpng = _fpng()
    except ImportError:
        return []
    out = []
    for name, px in images:
        row: dict[str, Any] = {"image": name, "fpng_bytes": len(fpng(px))}
        for level in UPLOAD_LEVELS:
            row[f"pillow{level}_bytes"] = len(_pillow("PNG", compress_level=level)()(px))
        out.append(row)
    return out


def fit_table(fit: list[dict[str, Any]]) -> str:
    """Markdown: in how many images fpng + padding reaches a level-L upload's length."""
    head = " | ".join(f"level {level}" for level in UPLOAD_LEVELS)
    lines = [f"| size | {head} |", "| --- |" + " ---: |" * len(UPLOAD_LEVELS)]
    for size in sorted({r["image"].rsplit("_", 1)[-1] for r in fit}, key=int):
        group = [r for r in fit if r["image"].rsplit("_", 1)[-1] == size]
        cells = []
        for level in UPLOAD_LEVELS:
            fits = sum(r["fpng_bytes"] + 12 <= r[f"pillow{level}_bytes"] for r in group)
            ratio = statistics.median(r["fpng_bytes"] / r[f"pillow{level}_bytes"] for r in group)
            cells.append(f"{fits}/{len(group)} (fpng {ratio:.2f}x)")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (candidate, size): summed time and bytes over the images, and ratios to baseline."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["candidate"], r["size"]), []).append(r)
    order = {c.name: i for i, c in enumerate(candidates())}
    keys = sorted(by, key=lambda k: (("PNG", "JPEG", "WEBP").index(by[k][0]["format"]),
                                     int(k[1].split("x")[0]), order.get(k[0], 0)))
    out = []
    for name, size in keys:
        group = by[(name, size)]
        base = by.get((group[0]["baseline"], size), [])
        ms, size_b = sum(r["median_ms"] for r in group), sum(r["bytes"] for r in group)
        base_ms, base_b = sum(r["median_ms"] for r in base), sum(r["bytes"] for r in base)
        fastest, base_fastest = (sum(r["min_ms"] for r in group),
                                 sum(r["min_ms"] for r in base))
        out.append({
            "candidate": name, "format": group[0]["format"], "size": size,
            "images": len(group), "baseline": group[0]["baseline"],
            "ms_per_image": round(ms / len(group), 2),
            "kb_per_image": round(size_b / len(group) / 1024, 1),
            "min_ms_per_image": round(fastest / len(group), 2),
            "speedup_vs_baseline": round(base_ms / ms, 2) if base and ms else None,
            "speedup_min_vs_baseline": round(base_fastest / fastest, 2) if base else None,
            "bytes_vs_baseline": round(size_b / base_b, 3) if base and base_b else None,
            "deterministic": all(r["repeat_identical"] and r.get("fresh_process_identical", True)
                                 for r in group),
            "lossless": all(r["lossless"] for r in group),
            "same_bytes_as_baseline": all(r.get("same_bytes_as_baseline", False) for r in group),
            "min_psnr_vs_baseline_decode": min(r.get("psnr_vs_baseline_decode", float("inf"))
                                               for r in group),
        })
    return out


def table(summary: list[dict[str, Any]], packages: dict[str, Any]) -> str:
    """Markdown table of the summary, one row per candidate and size."""
    by_name = {c.name: c for c in candidates()}
    lines = ["| format | size | candidate | options | package (installed MB) | ms median | "
             "speed vs baseline | ms min | speed (min) | KB/image | bytes vs baseline | "
             "deterministic | pixels |",
             "| --- | --- | --- | --- | --- |" + " ---: |" * 6 + " --- | --- |"]
    for s in summary:
        c = by_name[s["candidate"]]
        pkg = packages.get(c.dist, {})
        mb = pkg.get("installed_bytes")
        where = f"{c.dist} {pkg.get('version') or ''}".strip()
        if mb:
            where += f" ({mb / 1e6:.1f})"
        if s["lossless"]:
            pixels = "lossless"
        elif s["same_bytes_as_baseline"]:
            pixels = "bytes = baseline"
        elif s["min_psnr_vs_baseline_decode"] == float("inf"):
            pixels = "pixels = baseline"
        else:
            pixels = f"PSNR vs baseline ≥ {s['min_psnr_vs_baseline_decode']:.1f} dB"
        speed = "baseline" if c.name == c.baseline else f"{s['speedup_vs_baseline']:.2f}x"
        speed_min = "" if c.name == c.baseline else f"{s['speedup_min_vs_baseline']:.2f}x"
        ratio = "" if c.name == c.baseline else f"{s['bytes_vs_baseline']:.3f}"
        lines.append(f"| {s['format']} | {s['size']} | {c.name} | {c.options} | {where} | "
                     f"{s['ms_per_image']:.2f} | {speed} | {s['min_ms_per_image']:.2f} | "
                     f"{speed_min} | {s['kb_per_image']:.0f} | {ratio} | "
                     f"{'yes' if s['deterministic'] else 'NO'} | {pixels} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Where the numbers were taken."""
    cpu = cpu_model() or platform.processor() or ""
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(), "numpy": np.__version__,
            "pillow": _version("Pillow")}


def _jsonable(value: Any) -> Any:
    """Strict JSON: an infinite PSNR (identical pixels) is written as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, optionally write JSON."""
    ap = argparse.ArgumentParser(prog="s3latent bench encoders",
                                 description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="512,1024", help="square image sizes (default 512,1024)")
    ap.add_argument("--count", type=int, default=4, help="source images per size (default 4)")
    ap.add_argument("--repeats", type=int, default=7, help="timed encodes per image (median)")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="an existing corpus directory (index.json) instead of building one")
    ap.add_argument("--only", default=None,
                    help="comma-separated candidate names (their baselines are always run)")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    before = machine()
    images, content = load_images(sizes, args.count, args.corpus)
    print(f"{len(images)} images: {content}", file=sys.stderr)
    only = set(args.only.split(",")) if args.only else None
    result = run(images, args.repeats, only)
    summary = summarise(result["rows"])
    text = table(summary, result["packages"])
    print(text)
    if result["missing"]:
        print("\nnot installed: " + ", ".join(sorted(result["missing"])))
    fit = upload_fit(images)
    if fit:
        print("\nfpng rendition fits a Pillow PNG upload of the same pixels, by upload level:\n")
        print(fit_table(fit))
    if args.json:
        args.json.write_text(json.dumps(_jsonable({
            "command": "s3latent bench encoders " + " ".join(argv or sys.argv[1:]),
            "machine": {**{k: v for k, v in before.items() if k != "loadavg"},
                        "loadavg_at_start": before["loadavg"],
                        "loadavg_at_end": machine()["loadavg"]},
            "content": content, "repeats": args.repeats,
            "images": [n for n, _ in images], "summary": summary, "upload_fit": fit,
            **result,
        }), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
