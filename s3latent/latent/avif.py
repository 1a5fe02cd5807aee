"""AVIF as a stored representation: encode at the coarsest faithful quality, decode exactly.

The stored payload is whatever the encoder produced once, at admission, so the encoder
need not be deterministic. The decoder must be: every read turns the payload back into
pixels and encodes the rendition, whose MD5 and length were fixed at conversion. AV1
decoding is bit-exact by specification; the YUV->RGB step is libavif's. So the decoder is
pinned by name (dav1d, through Pillow's AVIF plugin, never "auto", which could pick another
decoder on another machine) and its libavif/dav1d/Pillow versions go into the render
profile, as the VAE and torch versions do for latents. `tests/test_avif.py` proves the
determinism (repeated decodes, thread counts, a fresh process).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL
from PIL import Image

DECODER = "dav1d"  # the AV1 decoder reads use; pinned (see the module docstring)
DEFAULT_SPEED = 6
DEFAULT_SUBSAMPLING = "4:4:4"  # 4:2:0 halves chroma: rarely meets a 40 dB policy cheaply
KIND = "avif"


class AvifUnavailable(RuntimeError):
    """This Pillow build cannot encode or decode AVIF with the pinned decoder."""


def _backend() -> Any:
    try:
        from PIL import _avif  # type: ignore[attr-defined]
    except ImportError as exc:
        raise AvifUnavailable(f"Pillow {PIL.__version__} has no AVIF support ({exc})") from exc
    return _avif


def available() -> bool:
    """Whether AVIF can be stored and read here (encoder present, pinned decoder present)."""
    try:
        backend = _backend()
    except AvifUnavailable:
        return False
    return bool(backend.decoder_codec_available(DECODER)) and \
        any(k.endswith("-enc") for k in codec_versions())


def codec_versions() -> dict[str, str]:
    """{"libavif": ..., "dav1d": ..., encoder name: ...} of this process's build."""
    backend = _backend()
    versions = {"libavif": str(backend.libavif_version), "pillow": PIL.__version__}
    for part in str(backend.codec_versions()).split(", "):
        name, _, rest = part.partition(" [")
        role, _, version = rest.partition("]:")
        versions[f"{name.strip()}-{role.strip()}"] = version.strip()
    return versions


def decoder_version() -> str:
    """The decoder as the render profile names it, e.g. libavif-1.4.2/dav1d-1.5.3."""
    versions = codec_versions()
    dec = versions.get(f"{DECODER}-dec")
    if dec is None:
        raise AvifUnavailable(f"the AV1 decoder {DECODER} is not in this libavif build "
                              f"({versions})")
    return f"libavif-{versions['libavif']}/{DECODER}-{dec}/pillow-{versions['pillow']}"


def encoder_version() -> str:
    """The encoder(s) this build offers (recorded in the container; not needed to read)."""
    versions = codec_versions()
    enc = [f"{k[:-4]}-{v}" for k, v in sorted(versions.items()) if k.endswith("-enc")]
    return f"libavif-{versions['libavif']}/" + "+".join(enc)


@dataclass(frozen=True)
class AvifParams:
    """Encoder settings of a stored payload (what `encode` was told)."""

    quality: int
    speed: int = DEFAULT_SPEED
    subsampling: str = DEFAULT_SUBSAMPLING

    def as_dict(self) -> dict[str, Any]:
        return {"quality": self.quality, "speed": self.speed, "subsampling": self.subsampling,
                "encoder": encoder_version()}


def encode(pixels: np.ndarray, params: AvifParams) -> bytes:
    """AVIF bytes of uint8 HxWx3 pixels, full range, no metadata."""
    import io

    _backend()
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB")
    out = io.BytesIO()
    image.save(out, "AVIF", quality=int(params.quality), speed=int(params.speed),
               subsampling=params.subsampling, range="full", max_threads=1)
    return out.getvalue()


def decode(data: bytes, threads: int = 1) -> np.ndarray:
    """uint8 HxWx3 pixels of AVIF `data`, decoded by the pinned decoder.

    Calls the plugin's decoder directly instead of Image.open, whose decoder choice and
    thread count are process-wide module globals of Pillow.
    """
    backend = _backend()
    if not backend.decoder_codec_available(DECODER):
        raise AvifUnavailable(f"the AV1 decoder {DECODER} is not available")
    decoder = backend.AvifDecoder(bytes(data), DECODER, max(1, int(threads)))
    size, frames, mode, *_ = decoder.get_info()
    if frames != 1:
        raise ValueError(f"AVIF payload has {frames} frames; one expected")
    raw = decoder.get_frame(0)[0]
    image = Image.frombytes(mode, tuple(size), raw)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def pixels_digest(pixels: np.ndarray) -> str:
    """SHA-256 of pixels with their shape (what determinism checks compare)."""
    h = hashlib.sha256(repr(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def coarsest(pixels: np.ndarray, meets: Callable[[bytes, np.ndarray], bool],
             speed: int = DEFAULT_SPEED, subsampling: str = DEFAULT_SUBSAMPLING,
             ) -> tuple[bytes, AvifParams] | None:
    """The smallest-quality AVIF whose decoded pixels `meets(payload, decoded)` accepts.

    Fidelity rises with quality, but a caller's test need not be monotone at the top (a
    near-lossless decode can keep the upload's noise, so its rendition no longer fits the
    upload's length). So the highest quality that passes is found first on a coarse grid
    from the top, then the boundary below it by bisection (about 8 encodes in all). Only a
    quality that was judged is returned, so the answer always meets the test. None when no
    quality on the grid does.
    """
    def judge(q: int) -> bytes | None:
        params = AvifParams(q, speed, subsampling)
        data = encode(pixels, params)
        return data if meets(data, decode(data)) else None

    grid = (100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 0)
    for q in grid:
        found = judge(q)
        if found is not None:
            best_q, best = q, found
            break
    else:
        return None
    lo = -1  # below the first pass, fidelity only falls: bisect down to the boundary
    hi = best_q  # invariant: hi passes, lo fails (or is below the range)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        data = judge(mid)
        if data is not None:
            hi, best_q, best = mid, mid, data
        else:
            lo = mid
    return best, AvifParams(best_q, speed, subsampling)
