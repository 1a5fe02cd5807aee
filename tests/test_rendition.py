"""Canonical renditions: exact sizes, same pixels, same bytes every time."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from s3latent.latent.fidelity import decode_image_bytes, psnr, ssim
from s3latent.latent.rendition import (
    RenderSettings,
    encode,
    encode_rendition_sized,
    pad,
    settings_for_upload,
)


def _pixels(seed: int = 0, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float64)
    img = np.stack([np.add.outer(base, base) / 2, np.add.outer(base, -base) / 2 + 128,
                    np.full((size, size), 90.0)], axis=-1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("settings", [RenderSettings("PNG"), RenderSettings("JPEG"),
                                      RenderSettings("WEBP"),
                                      RenderSettings("WEBP", webp_lossless=True)])
def test_padding_hits_exact_sizes_and_keeps_pixels(settings: RenderSettings) -> None:
    pixels = _pixels()
    plain = encode(pixels, settings)
    reference, _ = decode_image_bytes(plain)
    for extra in (0, 4, 8, 12, 13, 20, 64, 1000, 70_000, 140_000):
        if settings.format == "WEBP" and extra % 2:
            continue  # RIFF files are always of even length, uploads too
        data, used = encode_rendition_sized(pixels, settings, len(plain) + extra)
        overhead = {"PNG": 12, "JPEG": 4, "WEBP": 8}[settings.format]
        if 0 < extra < overhead and len(data) != len(plain) + extra:
            # Too small a gap for any chunk, and no other encoding found: never longer.
            assert len(data) <= len(plain) + extra
            continue
        assert len(data) == len(plain) + extra, (settings, extra)
        decoded, info = decode_image_bytes(data)
        assert np.array_equal(decoded, reference) and info.format == settings.format
        Image.open(io.BytesIO(data)).verify()
        again, used_again = encode_rendition_sized(pixels, used, len(plain) + extra)
        assert again == data and used_again == used  # deterministic, one encode on read


def test_gaps_too_small_to_pad_are_refused_by_pad() -> None:
    png = encode(_pixels(), RenderSettings("PNG"))
    assert pad(png, len(png) + 5, "PNG") is None
    assert pad(png, len(png) - 1, "PNG") is None
    jpg = encode(_pixels(), RenderSettings("JPEG"))
    assert pad(jpg, len(jpg) + 3, "JPEG") is None and pad(jpg, len(jpg) + 4, "JPEG")


def test_small_png_gap_found_through_other_levels() -> None:
    pixels = _pixels(3)
    settings = RenderSettings("PNG", png_level=1)
    target = len(encode(pixels, settings)) + 5  # level 1 cannot pad by 5 bytes
    data, used = encode_rendition_sized(pixels, settings, target)
    if len(data) == target:
        assert used != settings
        assert np.array_equal(decode_image_bytes(data)[0], pixels)


@pytest.mark.parametrize("quality", [60, 75, 90, 95])
def test_jpeg_quality_is_estimated(quality: int) -> None:
    out = io.BytesIO()
    Image.fromarray(_pixels()).save(out, "JPEG", quality=quality)
    settings = settings_for_upload(out.getvalue())
    assert settings.format == "JPEG" and abs(settings.jpeg_quality - quality) <= 2


def test_formats_detected() -> None:
    for fmt, lossless in (("PNG", False), ("WEBP", True), ("WEBP", False)):
        out = io.BytesIO()
        Image.fromarray(_pixels()).save(out, fmt, **({"lossless": lossless} if fmt == "WEBP"
                                                     else {}))
        s = settings_for_upload(out.getvalue())
        assert s.format == fmt and (fmt != "WEBP" or s.webp_lossless == lossless)


def test_unrepresentable_images_are_flagged() -> None:
    rgba = np.dstack([_pixels(), np.full((64, 64), 128, np.uint8)])
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    assert "transparent" in (decode_image_bytes(out.getvalue())[1].refusal or "")
    opaque = np.dstack([_pixels(), np.full((64, 64), 255, np.uint8)])
    out = io.BytesIO()
    Image.fromarray(opaque, "RGBA").save(out, "PNG")
    assert decode_image_bytes(out.getvalue())[1].refusal is None
    out = io.BytesIO()
    Image.fromarray(_pixels()).convert("CMYK").save(out, "JPEG")
    assert "CMYK" in (decode_image_bytes(out.getvalue())[1].refusal or "")
    out = io.BytesIO()
    Image.fromarray(_pixels()[..., 0].astype(np.uint16) * 256).save(out, "PNG")
    assert "16-bit" in (decode_image_bytes(out.getvalue())[1].refusal or "")


def test_psnr_and_ssim() -> None:
    a = _pixels()
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    b = a.copy()
    b[0, 0, 0] ^= 1
    mse = 1 / a.size
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 * 255 / mse))
    noisy = np.clip(a + np.random.default_rng(1).normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert 0 < ssim(a, noisy) < 0.95 and psnr(a, noisy) < 30
