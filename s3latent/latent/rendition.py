"""The canonical rendition: decoded pixels encoded with fixed settings, sized like the upload.

A converted object's bytes must be the same on every read (its ETag and length
were fixed at conversion), so everything that shapes them is named in the
settings and the render profile. To keep tools that compare sizes (aws s3
sync) content, a rendition shorter than the upload is padded to its exact
length with chunks every decoder ignores (PNG ancillary chunk, JPEG comment,
WebP unknown chunk); a longer one is first re-encoded harder with the same
pixels. Settings that reached the exact length are returned so conversion can
store them, and a read re-encodes with those alone.

The encoder is one of those settings. Pillow is the default and what every
object converted before the field existed used (its stored settings have no
`encoder`). New PNG conversions prefer fpng (about 100x faster than Pillow's
level 6 on 1024 px, 20-30% larger; docs/encoder-study.md) when it is installed
(a dependency of s3latent; S3LATENT_PNG_ENCODER=pillow turns it off). A
read never substitutes one encoder for another: settings naming an encoder this
process cannot run raise EncoderUnavailable, which the server answers with 500
and a log line, instead of serving bytes that disagree with the stored ETag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import PIL
import torch
from PIL import Image, JpegImagePlugin

Format = Literal["PNG", "JPEG", "WEBP"]
PILLOW, FPNG = "pillow", "fpng"
PNG_ENCODER_ENV = "S3LATENT_PNG_ENCODER"  # auto (default) | pillow | fpng; read by config
FAST_EXTRA_HINT = "pip install 'fpng>=0.1,<0.2' (a dependency of s3latent)"
_PNG_PAD_TYPE = b"paDd"  # ancillary, private, safe-to-copy: decoders skip it
_STD_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24,
             40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77,
             24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95,
             98, 112, 100, 103, 99)


@dataclass(frozen=True)
class RenderSettings:
    """Everything the encoder is told. Part of the render profile."""

    format: Format
    png_level: int = 6
    jpeg_quality: int = 90
    jpeg_subsampling: int = 2  # 0: 4:4:4, 1: 4:2:2, 2: 4:2:0
    jpeg_optimize: bool = False
    jpeg_progressive: bool = False
    webp_quality: int = 90
    webp_lossless: bool = False
    webp_method: int = 4
    # Which library encodes: "pillow", or "fpng" (PNG only; png_level does not apply).
    encoder: str = PILLOW


class EncoderUnavailable(RuntimeError):
    """Settings name an encoder this process cannot run; another would change the bytes."""


def _load_fpng() -> Any:
    try:
        import fpng
    except ImportError as exc:
        raise EncoderUnavailable(
            f"the fpng PNG encoder is not installed ({exc}); {FAST_EXTRA_HINT}") from exc
    return fpng


def encoder_installed(name: str) -> bool:
    """Whether this process can run the encoder `name` (Pillow always can)."""
    if name == PILLOW:
        return True
    if name != FPNG:
        return False
    try:
        _load_fpng()
    except EncoderUnavailable:
        return False
    return True


def preferred_png_encoder(choice: str = "auto") -> str:
    """The encoder new PNG conversions name: fpng when installed, unless configured off.

    `choice` ([decode] png_encoder, or S3LATENT_PNG_ENCODER): "auto" (fpng if installed,
    else Pillow), "pillow", or "fpng" (required: EncoderUnavailable when missing).
    """
    if choice == PILLOW:
        return PILLOW
    if choice == FPNG:
        _load_fpng()
        return FPNG
    if choice != "auto":
        raise ValueError(f"png_encoder must be auto, pillow or fpng, not {choice!r}")
    return FPNG if encoder_installed(FPNG) else PILLOW


def settings_for_format(fmt: Format, png_encoder: str = "auto") -> RenderSettings:
    """Default settings for a new rendition of `fmt` with no upload to resemble."""
    if fmt == "PNG":
        return RenderSettings("PNG", encoder=preferred_png_encoder(png_encoder))
    return RenderSettings(fmt)


def settings_for_upload(data: bytes, png_encoder: str = "auto") -> RenderSettings:
    """Fixed settings resembling the uploaded file, so the rendition is of similar size."""
    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format
        if fmt == "JPEG":
            sampling = JpegImagePlugin.get_sampling(im)
            return RenderSettings("JPEG", jpeg_quality=_estimate_jpeg_quality(im),
                                  jpeg_subsampling=sampling if sampling in (0, 1, 2) else 2,
                                  jpeg_optimize=True,
                                  jpeg_progressive=bool(im.info.get("progressive")))
        if fmt == "WEBP":
            return RenderSettings("WEBP", webp_lossless=b"VP8L" in data[12:40],
                                  webp_quality=90)
    return settings_for_format("PNG", png_encoder)


def _estimate_jpeg_quality(im: Image.Image) -> int:
    """Invert libjpeg's quality scaling from the luminance quantisation table."""
    tables = getattr(im, "quantization", None) or {}
    luma = tables.get(0)
    if not luma:
        return 90
    ratio = float(np.mean([q / s for q, s in zip(luma, _STD_LUMA, strict=False)])) * 100
    quality = (200 - ratio) / 2 if ratio <= 100 else 5000 / ratio
    return int(min(100, max(1, round(quality))))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [B,3,H,W] in [0,1] -> uint8 [B,H,W,3], clamped and rounded on its device."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def encode(pixels: np.ndarray, settings: RenderSettings) -> bytes:
    """Encode with exactly these settings (deterministic for a given encoder build).

    Raises EncoderUnavailable for an encoder that is unknown, not installed, or
    not one for this format: no other encoder may stand in for it.
    """
    if settings.encoder != PILLOW:
        return _encode_fast(pixels, settings)
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    out = io.BytesIO()
    if settings.format == "PNG":
        image.save(out, "PNG", compress_level=settings.png_level)
    elif settings.format == "JPEG":
        image.save(out, "JPEG", quality=settings.jpeg_quality,
                   subsampling=settings.jpeg_subsampling, optimize=settings.jpeg_optimize,
                   progressive=settings.jpeg_progressive)
    else:
        image.save(out, "WEBP", quality=settings.webp_quality,
                   lossless=settings.webp_lossless, method=settings.webp_method, exact=True)
    return out.getvalue()


def _encode_fast(pixels: np.ndarray, settings: RenderSettings) -> bytes:
    if settings.encoder != FPNG or settings.format != "PNG":
        raise EncoderUnavailable(f"no encoder {settings.encoder!r} for {settings.format}")
    fpng = _load_fpng()
    data = bytes(fpng.from_ndarray(np.ascontiguousarray(pixels, dtype=np.uint8)))
    # The binding returns empty bytes instead of raising when fpng fails.
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[-8:-4] != b"IEND":
        raise RuntimeError(f"fpng produced no PNG for pixels of shape {pixels.shape}")
    return data


def _harder(settings: RenderSettings) -> list[RenderSettings]:
    """Other encodings of the same pixels, smallest-first guesses.

    fpng has one mode; when it misses the size, Pillow is tried exactly as if
    the settings had named it (its level first, then the others), so such a
    conversion ends where it did before fpng existed, one fast encode later.
    """
    replace = dataclasses.replace
    if settings.format == "PNG" and settings.encoder != PILLOW:
        pillow = replace(settings, encoder=PILLOW)
        return [pillow, *_harder(pillow)]
    if settings.format == "PNG":
        return [replace(settings, png_level=level) for level in (9, 8, 7, 6, 5, 4, 3, 2, 1)
                if level != settings.png_level]
    if settings.format == "JPEG":
        return [replace(settings, jpeg_optimize=o, jpeg_progressive=p)
                for o, p in ((True, True), (True, False), (False, True), (False, False))
                if (o, p) != (settings.jpeg_optimize, settings.jpeg_progressive)]
    if settings.webp_lossless:
        return [replace(settings, webp_method=m) for m in (6, 5, 4, 3, 2, 1, 0)
                if m != settings.webp_method]
    return []  # lossy WebP: another method would change the pixels


def pad(data: bytes, target: int, fmt: Format) -> bytes | None:
    """`data` grown to exactly `target` bytes with ignorable content, or None if impossible."""
    gap = target - len(data)
    if gap == 0:
        return data
    if gap < 0:
        return None
    if fmt == "PNG":
        if gap < 12:
            return None
        body = b"\0" * (gap - 12)
        chunk = struct.pack(">I", len(body)) + _PNG_PAD_TYPE + body
        chunk += struct.pack(">I", zlib.crc32(_PNG_PAD_TYPE + body) & 0xFFFFFFFF)
        iend = data.rfind(b"IEND") - 4
        return data[:iend] + chunk + data[iend:]
    if fmt == "JPEG":
        if gap < 4:
            return None
        segments = []
        left = gap
        while left:
            size = min(left, 65537)
            if 0 < left - size < 4:  # keep the remainder a valid segment
                size = left - 4
            segments.append(b"\xff\xfe" + struct.pack(">H", size - 2) + b"\0" * (size - 4))
            left -= size
        return data[:2] + b"".join(segments) + data[2:]
    # WEBP: an unknown chunk at the end; the RIFF size grows with it.
    if gap < 8 or gap % 2:
        return None
    chunk = b"PADD" + struct.pack("<I", gap - 8) + b"\0" * (gap - 8)
    grown = data + chunk
    return grown[:4] + struct.pack("<I", len(grown) - 8) + grown[8:]


def encode_rendition_sized(pixels: np.ndarray, settings: RenderSettings,
                           target_size: int | None) -> tuple[bytes, RenderSettings]:
    """(bytes, settings used): exactly `target_size` long when any encoding allows it.

    The given settings are tried first, so a read that passes the settings stored
    at conversion gets the same bytes with one encode.
    """
    first = encode(pixels, settings)
    if target_size is None:
        return first, settings
    padded = pad(first, target_size, settings.format)
    if padded is not None:
        return padded, settings
    best = (first, settings)
    for alternative in _harder(settings):
        data = encode(pixels, alternative)
        padded = pad(data, target_size, alternative.format)
        if padded is not None:
            return padded, alternative
        if len(data) < len(best[0]):
            best = (data, alternative)
    return best


def _settings_repr(settings: RenderSettings) -> str:
    """repr() as it was before `encoder` existed when it is Pillow, so profiles stay put."""
    shown = [f"{f.name}={getattr(settings, f.name)!r}" for f in dataclasses.fields(settings)
             if f.name != "encoder" or settings.encoder != PILLOW]
    return f"RenderSettings({', '.join(shown)})"


def encoder_version(name: str) -> str:
    """Version of the library behind an encoder name (part of the render profile)."""
    if name == PILLOW:
        return PIL.__version__
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def render_profile(settings: RenderSettings, model_id: str, dtype: str, device_kind: str,
                   tiling: str | None = None, *, threads: int | None = None) -> str:
    """A short stable name for everything that shapes rendition bytes.

    `tiling` describes a tiled decode (models/tiling.py), `threads` the CPU intra-op thread
    count; profiles without either are unchanged.
    """
    parts = [model_id, dtype, device_kind, f"torch-{torch.__version__}",
             f"pillow-{PIL.__version__}", _settings_repr(settings)]
    if settings.encoder != PILLOW:
        parts.insert(5, f"{settings.encoder}-{encoder_version(settings.encoder)}")
    if tiling is not None:
        parts.append(tiling)
    if threads is not None:
        parts.append(f"threads-{threads}")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return f"{model_id}/{dtype}/{device_kind}/{digest}"


def avif_render_profile(settings: RenderSettings, decoder: str) -> str:
    """The render profile of a rendition decoded from a stored AVIF (no VAE, no torch).

    `decoder` is avif.decoder_version() (libavif, the pinned AV1 decoder, Pillow): like the
    latent decoder and torch for latents, it names everything that shapes the pixels.
    """
    parts = ["avif", decoder, f"pillow-{PIL.__version__}", _settings_repr(settings)]
    if settings.encoder != PILLOW:
        parts.insert(3, f"{settings.encoder}-{encoder_version(settings.encoder)}")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return f"avif/{decoder.split('/')[1]}/{digest}"
