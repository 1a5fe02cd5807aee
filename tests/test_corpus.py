"""Generated-image corpus: files, sidecar format, and that the sidecar really decodes to the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from s3latent.bench.corpus import _center_square, _synthetic, make_corpus, source_images
from s3latent.models.tae import load_tae

TAEF2_DIR = Path(__file__).resolve().parents[2] / "shared" / "models" / "taef2"
needs_taef2 = pytest.mark.skipif(
    not (TAEF2_DIR / "taef2_decoder.pth").is_file(), reason="TAEF2 weights absent"
)


def test_sources_are_rgb_and_cropped_square() -> None:
    name, source, img = next(iter(source_images()))
    assert img.mode == "RGB" and name and source
    square = _center_square(img, 64)
    assert square.size == (64, 64)
    a, b = _synthetic(3, 64), _synthetic(3, 64)
    assert a.tobytes() == b.tobytes() and a.tobytes() != _synthetic(4, 64).tobytes()


def test_missing_weights_and_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        make_corpus(tmp_path, sizes=(64,), count=1, model_dir=tmp_path)
    if (TAEF2_DIR / "taef2_decoder.pth").is_file():
        with pytest.raises(ValueError, match="multiples of 8"):
            make_corpus(tmp_path, sizes=(100,), count=1, model_dir=TAEF2_DIR)


@needs_taef2
def test_corpus_items_decode_back_to_their_png(tmp_path: Path) -> None:
    items = make_corpus(tmp_path / "a", sizes=(64, 128), count=3, model_dir=TAEF2_DIR)
    assert [i.size for i in items] == [64, 128, 64]
    assert items[0].name.endswith("_64") and items[0].source
    model = load_tae("taef2", TAEF2_DIR / "taef2_decoder.pth")
    for item in items:
        with Image.open(item.png) as im:
            png = np.asarray(im.convert("RGB"))
        assert png.shape == (item.size, item.size, 3)
        with safe_open(str(item.latent), framework="pt") as f:
            assert f.metadata() == {"model": "taef2"}
            latent = f.get_tensor("latent")
        assert latent.shape == (32, item.size // 8, item.size // 8)
        assert latent.dtype == torch.bfloat16
        rendered = model.decode(latent.float().unsqueeze(0))[0]
        pixels = rendered.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(pixels, png)  # the sidecar is exactly what made the image
        with Image.open(item.jpeg) as jp:
            assert jp.format == "JPEG" and jp.size == (item.size, item.size)
        assert item.jpeg_bytes < item.png_bytes
        assert item.psnr_vs_source > 18.0
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert [e["name"] for e in index] == [i.name for i in items]
    # deterministic on CPU: a second run writes identical files
    again = make_corpus(tmp_path / "b", sizes=(64, 128), count=3, model_dir=TAEF2_DIR)
    for x, y in zip(items, again, strict=True):
        assert x.png.read_bytes() == y.png.read_bytes()
        assert x.latent.read_bytes() == y.latent.read_bytes()


def test_varied_corpus_is_deterministic_and_covers_every_category() -> None:
    from s3latent.bench.corpus import CATEGORIES, varied_images

    first = list(varied_images(8))
    again = list(varied_images(8))
    assert [c for _, c, _ in first] == list(CATEGORIES) * 2
    assert len({n for n, _, _ in first}) == 8
    for (n1, _, a), (n2, _, b) in zip(first, again, strict=True):
        assert n1 == n2 and a.mode == "RGB" and a.tobytes() == b.tobytes()
    # Flat graphics and text really are flat: few distinct colours compared with a photo.
    colours = {c: len(np.unique(np.asarray(img).reshape(-1, 3), axis=0))
               for _, c, img in first[:4]}
    assert colours["flat"] < colours["photo"] and colours["text"] < colours["photo"]
