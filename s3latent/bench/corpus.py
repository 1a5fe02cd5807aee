"""A small offline corpus of "generated images" with their sidecar latents.

Why: tests and benchmarks need images that really are decoder outputs of a latent (so the
gateway's admission check passes the way it would for a FLUX.2 output), with no network and no
diffusion model. Natural photographs are encoded with the TAEF2 encoder and decoded with the
TAEF2 decoder: the decoded image is the "generated image", the latent its sidecar.

Sources: the public-domain / CC0 sample photographs bundled in scikit-image's wheel
(``skimage/data``: astronaut, coffee, chelsea, rocket, hubble_deep_field, retina, ihc, camera,
brick, grass, gravel, coins, cell; see each function's notes in ``skimage.data``). Without
scikit-image installed, seeded procedural images are used instead (``source="synthetic"``).

Files per item, in ``out_dir``: ``<name>.png`` (the generated image), ``<name>.latent.safetensors``
(tensor ``latent`` [32, h, w] bf16, metadata ``{"model": "taef2"}``: the tensor Flux2Pipeline
hands to ``vae.decode``, in the bf16 that pipeline runs in), and ``<name>.jpg`` (JPEG q90 of the
same pixels, for size comparisons). The PNG is the CPU fp32 decode of exactly the stored bf16
values, so re-decoding the sidecar on CPU reproduces it byte for byte.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["CATEGORIES", "CorpusItem", "default_model_dir", "make_corpus", "source_images",
           "varied_images"]

# Public domain or CC0 (per skimage.data's notes); colour photographs first.
_SKIMAGE_FILES = (
    ("astronaut", "astronaut.png"),
    ("coffee", "coffee.png"),
    ("chelsea", "chelsea.png"),
    ("rocket", "rocket.jpg"),
    ("hubble", "hubble_deep_field.jpg"),
    ("retina", "retina.jpg"),
    ("ihc", "ihc.png"),
    ("camera", "camera.png"),
    ("brick", "brick.png"),
    ("grass", "grass.png"),
    ("gravel", "gravel.png"),
    ("coins", "coins.png"),
    ("cell", "cell.png"),
)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class CorpusItem:
    """One generated image and where its files are."""

    name: str
    size: int
    source: str  # "skimage:<file>" or "synthetic"
    png: Path
    latent: Path
    jpeg: Path
    png_bytes: int
    jpeg_bytes: int
    latent_bytes: int  # the sidecar file, uncompressed
    psnr_vs_source: float  # how far the TAEF2 round trip moved the photograph


def default_model_dir() -> Path:
    """../shared/models/taef2 relative to the repository root (where the real weights live)."""
    return Path(__file__).resolve().parents[3] / "shared" / "models" / "taef2"


def _center_square(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _synthetic(seed: int, size: int) -> Image.Image:
    """Smooth colour fields plus texture: compressible like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    chans = []
    for _ in range(3):
        f = rng.uniform(1, 6, size=4)
        p = rng.uniform(0, 2 * np.pi, size=4)
        c = np.sin(2 * np.pi * f[0] * xx + p[0]) * np.cos(
            2 * np.pi * f[1] * yy + p[1]
        ) + 0.5 * np.sin(2 * np.pi * (f[2] * xx + f[3] * yy) + p[2])
        chans.append(c)
    arr = np.stack(chans, -1)
    arr = (arr - arr.min()) / (arr.max() - arr.min() + 1e-6)
    arr += rng.normal(0, 0.03, arr.shape).astype(np.float32)
    return Image.fromarray((arr.clip(0, 1) * 255).round().astype(np.uint8), "RGB")


def source_images() -> Iterator[tuple[str, str, Image.Image]]:
    """(name, source, RGB image) for each bundled photograph, or synthetic ones without skimage."""
    try:
        import skimage
    except ImportError:
        for i in range(8):
            yield f"synthetic{i:02d}", "synthetic", _synthetic(i, 1024)
        return
    data_dir = Path(skimage.__file__).parent / "data"
    found = False
    for name, fname in _SKIMAGE_FILES:
        path = data_dir / fname
        if not path.is_file():
            continue
        found = True
        with Image.open(path) as im:
            yield name, f"skimage:{fname}", im.convert("RGB")
    if not found:
        for i in range(8):
            yield f"synthetic{i:02d}", "synthetic", _synthetic(i, 1024)


CATEGORIES = ("photo", "illustration", "flat", "text")


def _illustration(seed: int, size: int) -> Image.Image:
    """Cel-shaded blobs with dark outlines over a soft sky gradient (drawn at 2x, downsampled)."""
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(1000 + seed)
    big = size * 2
    yy = np.linspace(0, 1, big, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(80, 255, 3), rng.uniform(20, 200, 3)
    sky = (top * (1 - yy) + bottom * yy) * np.ones((1, big, 1), np.float32)
    img = Image.fromarray(sky.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 12))):
        x0, y0 = rng.uniform(0, big, 2)
        r = rng.uniform(big * 0.05, big * 0.25)
        fill = tuple(int(v) for v in rng.uniform(30, 255, 3))
        shade = tuple(int(v * 0.7) for v in fill)
        box = (x0 - r, y0 - r * 0.8, x0 + r, y0 + r * 0.8)
        draw.ellipse(box, fill=shade, outline=(20, 15, 30), width=max(2, big // 200))
        inner = (x0 - r * 0.8, y0 - r * 0.7, x0 + r * 0.6, y0 + r * 0.4)
        draw.ellipse(inner, fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _flat(seed: int, size: int) -> Image.Image:
    """Flat graphics: a bar chart, icons and solid panels in a few colours."""
    from PIL import ImageDraw

    rng = np.random.default_rng(2000 + seed)
    big = size * 2
    palette = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(5)]
    img = Image.new("RGB", (big, big), palette[0])
    draw = ImageDraw.Draw(img)
    bars = int(rng.integers(4, 9))
    width = big * 0.8 / bars
    for i in range(bars):
        h = rng.uniform(0.1, 0.6) * big
        x = big * 0.1 + i * width
        draw.rectangle((x + 4, big * 0.9 - h, x + width - 4, big * 0.9), fill=palette[1 + i % 3])
    draw.line((big * 0.08, big * 0.9, big * 0.92, big * 0.9), fill=palette[4], width=big // 150)
    for _ in range(int(rng.integers(3, 7))):
        x, y, r = rng.uniform(0.1, 0.9) * big, rng.uniform(0.05, 0.3) * big, big * 0.04
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=palette[int(rng.integers(1, 5))])
        else:
            draw.regular_polygon((x, y, r), int(rng.integers(3, 7)),
                                 fill=palette[int(rng.integers(1, 5))])
    return img.resize((size, size), Image.Resampling.LANCZOS)


_WORDS = ("latent storage gateway image decoder policy render profile bucket object sidecar "
          "quality margin codec pixels bytes listing range request version admission").split()


def _text(seed: int, size: int) -> Image.Image:
    """Lines of text (Pillow's built-in font, scaled) on a plain or tinted page."""
    from PIL import ImageDraw, ImageFont

    rng = np.random.default_rng(3000 + seed)
    bg = tuple(int(v) for v in rng.integers(200, 256, 3)) if seed % 2 else (255, 255, 255)
    ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    pt = max(10, int(size / float(rng.choice([18, 28, 40]))))
    try:
        font: Any = ImageFont.load_default(size=pt)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    y = int(size * 0.05)
    while y < size * 0.92:
        words = [str(rng.choice(_WORDS)) for _ in range(int(rng.integers(3, 12)))]
        draw.text((int(size * 0.05), y), " ".join(words), fill=ink, font=font)
        y += int(pt * 1.4)
    return img


def varied_images(count: int = 24) -> Iterator[tuple[str, str, Image.Image]]:
    """(name, category, RGB image): photographs, illustrations, flat graphics and text,
    round-robin, `count` in all; deterministic (procedural, seeded; photographs from
    scikit-image when installed, else seeded synthetic photo-like fields)."""
    photos = [(n, img) for n, _src, img in source_images()]
    makers = {"illustration": _illustration, "flat": _flat, "text": _text}
    for i in range(count):
        category, k = CATEGORIES[i % 4], i // 4
        if category == "photo":
            if k < len(photos):
                name, img = photos[k]
                yield f"photo-{name}", category, img
            else:
                yield f"photo-synthetic{k:02d}", category, _synthetic(k, 1024)
        else:
            yield f"{category}{k:02d}", category, makers[category](k, 1024)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


def _to_image(x: torch.Tensor) -> Image.Image:
    arr = x[0].float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _write_sidecar(path: Path, latent: torch.Tensor, model_id: str) -> None:
    from safetensors.torch import save

    blob = save({"latent": latent.contiguous()}, metadata={"model": model_id})
    path.write_bytes(blob)


def make_corpus(
    out_dir: Path,
    sizes: Sequence[int] = (512, 1024),
    count: int | None = None,
    model_dir: Path | None = None,
    *,
    device: torch.device | str = "cpu",
    varied: bool = False,
) -> list[CorpusItem]:
    """Write up to `count` items (all sources x sizes when None) and an index.json; return them.

    Items are ordered source-major (astronaut@512, astronaut@1024, coffee@512, ...). Deterministic
    on CPU: the same inputs give byte-identical files. Raises FileNotFoundError without weights.
    """
    from s3latent.models.tae import load_tae

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    dec, enc = model_dir / "taef2_decoder.pth", model_dir / "taef2_encoder.pth"
    for p in (dec, enc):
        if not p.is_file():
            raise FileNotFoundError(f"TAEF2 weights not found: {p}")
    for s in sizes:
        if s <= 0 or s % 8:
            raise ValueError(f"sizes must be positive multiples of 8, got {s}")
    model = load_tae("taef2", dec, enc, device=device, model_id="taef2")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    items: list[CorpusItem] = []
    sources = varied_images(count if count is not None else 24) if varied else source_images()
    for name, source, img in sources:
        for size in sizes:
            if count is not None and len(items) >= count and not varied:
                break
            items.append(_make_item(model, out_dir, f"{name}_{size}", source, img, size))
        if count is not None and len(items) >= count and not varied:
            break
    index = [{k: str(v) if isinstance(v, Path) else v for k, v in asdict(i).items()} for i in items]
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))
    return items


def _make_item(
    model: torch.nn.Module, out_dir: Path, stem: str, source: str, img: Image.Image, size: int
) -> CorpusItem:
    photo = _center_square(img, size)
    latent = model.encode(_to_tensor(photo)).to(torch.bfloat16)
    generated = _to_image(model.decode(latent.float()))
    png, sidecar, jpeg = (
        out_dir / f"{stem}.png",
        out_dir / f"{stem}.latent.safetensors",
        out_dir / f"{stem}.jpg",
    )
    buf = io.BytesIO()
    generated.save(buf, format="PNG")
    png.write_bytes(buf.getvalue())
    buf = io.BytesIO()
    generated.save(buf, format="JPEG", quality=JPEG_QUALITY)
    jpeg.write_bytes(buf.getvalue())
    _write_sidecar(sidecar, latent[0].cpu(), "taef2")
    return CorpusItem(
        name=stem,
        size=size,
        source=source,
        png=png,
        latent=sidecar,
        jpeg=jpeg,
        png_bytes=png.stat().st_size,
        jpeg_bytes=jpeg.stat().st_size,
        latent_bytes=sidecar.stat().st_size,
        psnr_vs_source=round(_psnr(photo, generated), 3),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m s3latent.bench.corpus OUT [--count N] [--sizes 512,1024] [--model-dir D]`."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--model-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s)
    for item in make_corpus(args.out_dir, sizes, args.count, args.model_dir):
        print(
            f"{item.name}\tpng={item.png_bytes}\tjpeg90={item.jpeg_bytes}\t"
            f"latent={item.latent_bytes}\tpsnr_vs_source={item.psnr_vs_source}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
