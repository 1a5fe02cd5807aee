"""Sidecar files: one safetensors tensor ``latent`` next to an uploaded image.

Why our own parser: the bytes come from any client. Everything is checked against the body before
anything is allocated (header length against body size, a bounded header, offsets that cover the
data exactly, shape x dtype against the span), so a hostile upload costs at most one bounded JSON
parse. The format itself is the safetensors one: an 8-byte little-endian header length N, N bytes
of JSON (padded with spaces), then the raw little-endian tensor data.

The raw header (length prefix + JSON + padding) is kept so the sidecar key can be answered with a
file of the same length as the upload after conversion (`build_sidecar_bytes`), byte-identical
when the latent was stored losslessly.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import torch

__all__ = [
    "DTYPE_NAMES",
    "MAX_BYTES",
    "MAX_CHANNELS",
    "MAX_HEADER_BYTES",
    "MAX_HW",
    "Sidecar",
    "SidecarError",
    "build_sidecar_bytes",
    "check_channels",
    "parse_sidecar",
]

# safetensors dtype code -> (our dtype name, torch dtype, bytes per element)
_ST_DTYPES: dict[str, tuple[str, torch.dtype, int]] = {
    "F32": ("float32", torch.float32, 4),
    "F16": ("float16", torch.float16, 2),
    "BF16": ("bfloat16", torch.bfloat16, 2),
}
DTYPE_NAMES: dict[torch.dtype, str] = {v[1]: v[0] for v in _ST_DTYPES.values()}

MAX_HW = 512  # latent pixels per side (4096 image px at /8)
MAX_BYTES = 64 * 1024 * 1024  # whole sidecar file
MAX_HEADER_BYTES = 64 * 1024  # the JSON header; metadata is small
MAX_CHANNELS = 256
TENSOR_NAME = "latent"


class SidecarError(ValueError):
    """A sidecar that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Sidecar:
    """A validated sidecar. `latent` is [C, h, w] in the uploaded dtype (a copy, writable)."""

    latent: torch.Tensor
    model: str | None
    metadata: dict[str, str]
    header_bytes: bytes  # 8-byte length + JSON + padding, exactly as uploaded
    raw_dtype: str  # "float32" | "float16" | "bfloat16"
    raw_shape: tuple[int, ...] = field(default=())  # as uploaded: (C,h,w) or (1,C,h,w)

    @property
    def size(self) -> int:
        """Length of the uploaded file (header + data)."""
        return len(self.header_bytes) + self.latent.numel() * self.latent.element_size()


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise SidecarError(f"safetensors header has the key {k!r} twice")
        out[k] = v
    return out


def _reject_constant(name: str) -> object:
    raise SidecarError(f"safetensors header contains {name}, which is not JSON")


def parse_sidecar(
    data: bytes | bytearray | memoryview,
    *,
    max_hw: int = MAX_HW,
    max_bytes: int = MAX_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_channels: int = MAX_CHANNELS,
) -> Sidecar:
    """Validate a sidecar upload and return its latent; raise `SidecarError` saying why not."""
    data = bytes(data)
    total = len(data)
    if total > max_bytes:
        raise SidecarError(f"sidecar is {total} bytes; the limit is {max_bytes}")
    if total < 8:
        raise SidecarError("not a safetensors file: shorter than its 8-byte header length")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n < 2 or n > max_header_bytes:
        raise SidecarError(
            f"not a safetensors file: header length field says {n} bytes "
            f"(must be 2..{max_header_bytes})"
        )
    if 8 + n > total:
        raise SidecarError(
            f"truncated safetensors file: header length field says {n} bytes "
            f"but only {total - 8} follow"
        )
    raw_header = data[8 : 8 + n]
    if raw_header[:1] != b"{":
        raise SidecarError("not a safetensors file: the header is not a JSON object")
    try:
        text = raw_header.decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except SidecarError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise SidecarError(f"not a safetensors file: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SidecarError("not a safetensors file: the header is not a JSON object")

    meta_raw = header.pop("__metadata__", None) or {}
    if not isinstance(meta_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta_raw.items()
    ):
        raise SidecarError("safetensors __metadata__ must map strings to strings")
    metadata: dict[str, str] = dict(meta_raw)

    names = sorted(header)
    if names != [TENSOR_NAME]:
        shown = ", ".join(repr(k) for k in names) or "none"
        raise SidecarError(
            f"sidecar must hold exactly one tensor named {TENSOR_NAME!r}; it holds {shown}"
        )
    info = header[TENSOR_NAME]
    if not isinstance(info, dict):
        raise SidecarError(f"tensor {TENSOR_NAME!r}: entry is not an object")
    st_dtype = info.get("dtype")
    if st_dtype not in _ST_DTYPES:
        raise SidecarError(f"tensor {TENSOR_NAME!r} has dtype {st_dtype!r}; use F32, F16 or BF16")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise SidecarError(f"tensor {TENSOR_NAME!r}: shape must be a list of non-negative ints")
    if len(shape) == 4:
        if shape[0] != 1:
            raise SidecarError(
                f"tensor {TENSOR_NAME!r} has shape {shape}: a 4-d latent must have batch size 1"
            )
        chw = shape[1:]
    elif len(shape) == 3:
        chw = shape
    else:
        raise SidecarError(
            f"tensor {TENSOR_NAME!r} has rank {len(shape)} (shape {shape}); "
            "expected [C, h, w] or [1, C, h, w]"
        )
    c, h, w = chw
    if min(c, h, w) < 1:
        raise SidecarError(f"tensor {TENSOR_NAME!r} has an empty shape {shape}")
    if h > max_hw or w > max_hw:
        raise SidecarError(
            f"tensor {TENSOR_NAME!r} is {h}x{w} latent pixels; the limit is {max_hw} per side"
        )
    if c > max_channels:
        raise SidecarError(f"tensor {TENSOR_NAME!r} has {c} channels; the limit is {max_channels}")
    name, dtype, itemsize = _ST_DTYPES[st_dtype]
    nbytes = math.prod(chw) * itemsize
    offsets = info.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise SidecarError(f"tensor {TENSOR_NAME!r}: data_offsets must be [begin, end]")
    begin, end = offsets
    body = total - 8 - n
    if begin != 0 or end != nbytes:
        raise SidecarError(
            f"tensor {TENSOR_NAME!r}: data_offsets {offsets} do not match its shape and dtype "
            f"([0, {nbytes}] expected)"
        )
    if body != nbytes:
        raise SidecarError(
            f"sidecar body is {body} bytes but tensor {TENSOR_NAME!r} needs {nbytes}"
            + (" (truncated upload?)" if body < nbytes else " (trailing bytes)")
        )
    buf = bytearray(data[8 + n :])
    latent = torch.frombuffer(buf, dtype=dtype).reshape(c, h, w)
    if not bool(torch.isfinite(latent).all()):
        bad = int((~torch.isfinite(latent)).sum())
        raise SidecarError(f"tensor {TENSOR_NAME!r} contains {bad} NaN or infinite values")
    model = metadata.get("model")
    return Sidecar(
        latent=latent,
        model=model if model else None,
        metadata=metadata,
        header_bytes=data[: 8 + n],
        raw_dtype=name,
        raw_shape=tuple(shape),
    )


def check_channels(sidecar: Sidecar, expected: int, model: str | None = None) -> None:
    """Refuse a latent whose channel count the named decoder cannot take."""
    got = int(sidecar.latent.shape[0])
    if got != expected:
        who = model or sidecar.model or "the model"
        raise SidecarError(
            f"tensor {TENSOR_NAME!r} has {got} channels; model {who} expects {expected}"
        )


def build_sidecar_bytes(header_bytes: bytes, latent: torch.Tensor) -> bytes:
    """The sidecar file again, from its kept header and a (possibly dequantised) latent.

    Same length as the upload by construction; byte-identical when `latent` holds the original
    values. The latent is cast to the header's dtype.
    """
    if len(header_bytes) < 10:
        raise SidecarError("header bytes too short to be a safetensors header")
    (n,) = struct.unpack_from("<Q", header_bytes, 0)
    if n + 8 != len(header_bytes):
        raise SidecarError("header bytes do not match their own length field")
    try:
        header = json.loads(header_bytes[8:].decode("utf-8"))
        info = header[TENSOR_NAME]
        _, dtype, itemsize = _ST_DTYPES[info["dtype"]]
        shape = list(info["shape"])
        begin, end = info["data_offsets"]
    except (KeyError, TypeError, ValueError) as exc:
        raise SidecarError(f"kept sidecar header is unusable ({exc})") from None
    if latent.numel() != math.prod(shape) or end - begin != latent.numel() * itemsize:
        raise SidecarError(
            f"latent of shape {list(latent.shape)} does not fit the kept header's shape {shape}"
        )
    t = latent.detach().to("cpu", dtype).contiguous().reshape(-1)
    # Bytes in little-endian order (safetensors); torch stores native order, LE on all targets.
    raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return header_bytes + raw
