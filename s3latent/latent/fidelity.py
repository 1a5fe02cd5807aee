"""Reading uploaded images and measuring how close a rendition is to them."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = 16384 * 16384  # refuse decompression bombs beyond 268 MP


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "PNG" | "JPEG" | "WEBP" | other Pillow format names
    mode: str
    width: int
    height: int
    refusal: str | None  # why a 3-channel VAE cannot represent it, or None


def decode_image_bytes(data: bytes) -> tuple[np.ndarray, ImageInfo]:
    """uint8 HxWx3 pixels and what the file is; raises for unreadable data.

    Pillow names the unreadable stream by its repr (`<_io.BytesIO object at 0x...>`),
    which ends up in refusal reasons clients read: say what is wrong instead.
    """
    try:
        opened = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"unrecognised image format ({len(data)} bytes, starting with "
                         f"{data[:8].hex()})") from None
    with opened as im:
        fmt, mode = im.format or "", im.mode
        refusal = None
        if fmt not in ("PNG", "JPEG", "WEBP"):
            refusal = f"{fmt or 'unknown'} images are not converted"
        elif getattr(im, "n_frames", 1) > 1:
            refusal = "animated images are not converted"
        elif mode in ("I;16", "I;16B", "I;16L", "I", "F") or (fmt == "PNG" and
                                                              im.info.get("bits", 8) > 8):
            refusal = "16-bit images are not converted"
        elif mode == "CMYK":
            refusal = "CMYK images are not converted"
        im.load()
        if refusal is None and ("A" in mode or "transparency" in im.info):
            alpha = np.asarray(im.convert("RGBA"))[..., 3]
            if (alpha != 255).any():
                refusal = "images with transparent pixels are not converted"
        pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
        info = ImageInfo(fmt, mode, im.width, im.height, refusal)
    return pixels, info


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * np.log10(255.0 * 255.0 / mse)


def _blur(x: np.ndarray, size: int = 7) -> np.ndarray:
    """Mean over size x size windows (valid region), by cumulative sums."""
    c = np.cumsum(np.cumsum(x, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0)))
    s = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    return s / (size * size)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM on luma with 7x7 uniform windows (Wang et al., K1=0.01, K2=0.03)."""
    weights = np.array([0.299, 0.587, 0.114])
    x = a.astype(np.float64) @ weights if a.ndim == 3 else a.astype(np.float64)
    y = b.astype(np.float64) @ weights if b.ndim == 3 else b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _blur(x), _blur(y)
    vx = _blur(x * x) - mx * mx
    vy = _blur(y * y) - my * my
    cov = _blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())
