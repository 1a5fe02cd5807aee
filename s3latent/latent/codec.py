"""Latent codecs: how a [C, h, w] latent becomes the payload of a container, and back.

Codecs (``get_codec(name)``):

- ``lossless``: the tensor's own bytes, byte-shuffled into planes (all first bytes, all second
  bytes, ...) and zstd-compressed. Bit-exact for float32, float16 and bfloat16.
- ``q8``, ``q6``, ``q4``: per-channel affine quantisation to 2**bits levels between the channel's
  min and max, one byte per value, zstd. Simple baselines; the error is at most half a level.
- ``q8p``, ``q6p``, ``q4p``, ``q3p``: presets of the *predictive* codec (``PredictiveCodec``),
  from fine to coarse (see ``PREDICTIVE_STEPS``); ``encode_to_target`` picks the coarsest step
  that still meets a fidelity target ("auto" in the study):

  1. per-channel mean removal and a per-channel gain (the decoder's sensitivity to that channel,
     from ``CHANNEL_WEIGHTS`` for known models; 1 otherwise), so one step size means the same
     image error in every channel;
  2. a per-image KLT (PCA) across channels, stored as a float16 matrix, which concentrates the
     energy of the strongly correlated latent channels in a few components;
  3. closed-loop hierarchical interpolative prediction in space: a coarse grid first, then at
     each finer level the midpoints predicted from their already *decoded* neighbours, so every
     value is coded as a small integer residual with a bounded error (half a step in the
     transformed domain) and no drift;
  4. the residuals are entropy-coded with a static-table rANS coder, one frequency table per
     context (level, component group, local activity of the decoded neighbours), interleaved
     over many lanes so numpy decodes a whole lane-row of symbols per step. zstd on the same
     symbols was 15-17% larger (Huffman cannot code the peaky, <1 bit contexts well).

  Decoding is a few dozen vectorised numpy passes (well under 50 ms for 32x128x128 on one core)
  and uses only element-wise float32 arithmetic plus one float64 matrix product, so it is
  deterministic for a given machine kind and library versions.

``encode`` returns ``(payload, params)``; ``params`` is JSON-able and, with the shape and dtype,
is all ``decode`` needs (decoding never needs the model).
"""

from __future__ import annotations

import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import zstandard

__all__ = [
    "CHANNEL_WEIGHTS",
    "CODEC_NAMES",
    "AffineCodec",
    "Codec",
    "CodecError",
    "LosslessCodec",
    "PredictiveCodec",
    "dtype_name",
    "encode_to_target",
    "get_codec",
    "torch_dtype",
]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_ZSTD_LEVEL = 12


class CodecError(ValueError):
    """A payload or params that do not decode (corrupt, or a codec we do not know)."""


def torch_dtype(name: str) -> torch.dtype:
    """Map our dtype names ("float32", "float16", "bfloat16") to torch dtypes."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise CodecError(f"unsupported latent dtype {name!r}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """Inverse of `torch_dtype`."""
    for k, v in _DTYPES.items():
        if v == dtype:
            return k
    raise CodecError(f"unsupported latent dtype {dtype}")


def _check_latent(latent: torch.Tensor) -> torch.Tensor:
    if latent.dim() != 3:
        raise CodecError(f"codecs take a [C, h, w] latent, got shape {list(latent.shape)}")
    dtype_name(latent.dtype)
    return latent.detach().to("cpu").contiguous()


def _zc(data: bytes) -> bytes:
    cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=False)
    return cctx.compress(data)


def _zd(data: bytes, limit: int) -> bytes:
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise CodecError(f"corrupt payload ({exc})") from None
    return out


def _pack_streams(streams: Sequence[bytes]) -> bytes:
    """Several zstd streams in one payload: count, then lengths, then the bytes."""
    comp = [_zc(s) if s else b"" for s in streams]
    head = struct.pack(f"<I{len(comp)}I", len(comp), *(len(c) for c in comp))
    return head + b"".join(comp)


def _unpack_streams(payload: bytes, limit: int) -> list[bytes]:
    if len(payload) < 4:
        raise CodecError("corrupt payload (too short)")
    (n,) = struct.unpack_from("<I", payload, 0)
    if n > 4096 or 4 + 4 * n > len(payload):
        raise CodecError("corrupt payload (stream table)")
    lens = struct.unpack_from(f"<{n}I", payload, 4)
    pos = 4 + 4 * n
    if pos + sum(lens) != len(payload):
        raise CodecError("corrupt payload (stream lengths)")
    out = []
    for ln in lens:
        chunk = payload[pos : pos + ln]
        pos += ln
        out.append(_zd(chunk, limit) if ln else b"")
    return out


class Codec(ABC):
    """Turns a [C, h, w] latent into bytes + JSON-able params and back."""

    name: str
    lossless: bool

    @abstractmethod
    def encode(self, latent: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
        """Compress; same input gives the same bytes."""

    @abstractmethod
    def decode(
        self, payload: bytes, params: dict[str, Any], shape: tuple[int, ...], dtype: str
    ) -> torch.Tensor:
        """Rebuild the latent ([C, h, w], `dtype`); raise `CodecError` if it cannot."""


def _shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(d) < 1 for d in shape):
        raise CodecError(f"latent shape must be [C, h, w], got {list(shape)}")
    c, h, w = (int(d) for d in shape)
    return c, h, w


class LosslessCodec(Codec):
    """Byte planes + zstd: the exact bits of any float dtype, a little smaller."""

    name = "lossless"
    lossless = True

    def encode(self, latent: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
        t = _check_latent(latent)
        raw = t.reshape(-1).view(torch.uint8).numpy()
        k = t.element_size()
        planes = raw.reshape(-1, k).T.copy()  # little-endian: plane 0 = low bytes
        return _zc(planes.tobytes()), {"shuffle": k}

    def decode(
        self, payload: bytes, params: dict[str, Any], shape: tuple[int, ...], dtype: str
    ) -> torch.Tensor:
        c, h, w = _shape3(shape)
        dt = torch_dtype(dtype)
        k = torch.empty((), dtype=dt).element_size()
        n = c * h * w
        raw = _zd(payload, n * k)
        if len(raw) != n * k or params.get("shuffle") != k:
            raise CodecError("corrupt payload (size does not match shape and dtype)")
        planes = np.frombuffer(raw, dtype=np.uint8).reshape(k, n)
        inter = np.ascontiguousarray(planes.T).reshape(-1)
        return torch.from_numpy(inter.copy()).view(dt).reshape(c, h, w)


def _f32_list(a: np.ndarray) -> list[float]:
    """float32 values as JSON floats (a float64 holds each exactly, so they round-trip)."""
    return [float(v) for v in np.asarray(a, dtype=np.float32).reshape(-1)]


def _f32_param(params: dict[str, Any], key: str, n: int) -> np.ndarray:
    try:
        a = np.asarray(params[key], dtype=np.float64).astype(np.float32)
    except (KeyError, TypeError, ValueError):
        raise CodecError(f"codec params lack a valid {key!r}") from None
    if a.shape != (n,) or not np.isfinite(a).all():
        raise CodecError(f"codec param {key!r} must be {n} finite numbers")
    return a


class AffineCodec(Codec):
    """Per-channel min/max affine quantisation to `bits` bits, one byte a value, zstd."""

    lossless = False

    def __init__(self, bits: int) -> None:
        if not 2 <= bits <= 8:
            raise ValueError("bits must be 2..8")
        self.bits = bits
        self.name = f"q{bits}"

    def encode(self, latent: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
        x = _check_latent(latent).float().numpy()
        c = x.shape[0]
        flat = x.reshape(c, -1)
        lo = flat.min(axis=1).astype(np.float32)
        hi = flat.max(axis=1).astype(np.float32)
        levels = (1 << self.bits) - 1
        scale = ((hi - lo) / np.float32(levels)).astype(np.float32)
        scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
        q = np.rint((flat - lo[:, None]) / scale[:, None])
        q = np.clip(q, 0, levels).astype(np.uint8)
        return _zc(q.tobytes()), {"bits": self.bits, "lo": _f32_list(lo), "scale": _f32_list(scale)}

    def decode(
        self, payload: bytes, params: dict[str, Any], shape: tuple[int, ...], dtype: str
    ) -> torch.Tensor:
        c, h, w = _shape3(shape)
        dt = torch_dtype(dtype)
        if params.get("bits") != self.bits:
            raise CodecError(f"params are not {self.name}'s")
        lo = _f32_param(params, "lo", c)
        scale = _f32_param(params, "scale", c)
        raw = _zd(payload, c * h * w)
        if len(raw) != c * h * w:
            raise CodecError("corrupt payload (size does not match shape)")
        q = np.frombuffer(raw, dtype=np.uint8).reshape(c, h * w).astype(np.float32)
        x = q * scale[:, None] + lo[:, None]
        return torch.from_numpy(x.reshape(c, h, w)).to(dt)


# --------------------------------------------------------------------------------------------
# Predictive codec


# Relative image-MSE sensitivity of each latent channel (decoder-specific), measured by
# `python -m s3latent.bench.codec_study calibrate` (image MSE per unit of white latent noise in
# that channel, averaged over coffee/chelsea/rocket at 512², normalised to geometric mean 1).
# Unknown models get uniform weights.
CHANNEL_WEIGHTS: dict[str, tuple[float, ...]] = {
    "taef2": (
        0.5454,
        1.3085,
        1.262,
        9.8876,
        0.6888,
        1.2235,
        1.0039,
        0.749,
        8.5971,
        0.5165,
        0.5368,
        1.3215,
        0.6678,
        0.5043,
        0.9583,
        2.3824,
        0.6415,
        0.5139,
        0.6092,
        2.3619,
        0.6248,
        0.6778,
        0.8512,
        0.5463,
        1.3725,
        0.8437,
        1.3156,
        0.7078,
        0.6253,
        1.3642,
        0.6833,
        1.2465,
    ),
}

_N_ACT = 5  # activity classes per (level, group)
_N_GROUPS = 2  # KLT component groups (strong / weak)
_ALPHABET = 64  # zigzag residuals 0..62 coded directly, 63 = escape (value in a side stream)
_PROB_BITS = 12
_PROB_ONE = 1 << _PROB_BITS
_RANS_LOW = 1 << 16


def _zigzag(q: np.ndarray) -> np.ndarray:
    q = q.astype(np.int64)
    return np.where(q >= 0, 2 * q, -2 * q - 1)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.int64)
    return np.where(z & 1, -((z + 1) >> 1), z >> 1)


def _phases(h: int, w: int) -> list[tuple[int, str]]:
    """The coding order: ('base', stride) then per level the three midpoint phases."""
    levels = 0
    while (1 << levels) * 8 < max(h, w):
        levels += 1
    order: list[tuple[int, str]] = [(1 << levels, "base")]
    s = 1 << levels
    while s > 1:
        s //= 2
        order += [(s, "A"), (s, "B"), (s, "C")]
    return order


def _neighbours(rec: np.ndarray, s: int, kind: str) -> tuple[tuple[slice, slice], list[np.ndarray]]:
    """Target slices of a phase and its decoded neighbours (same shape as the target).

    A right/down neighbour beyond the border is replaced by the left/up one, so the mean is
    over the neighbours that exist.
    """
    g = 2 * s
    if kind == "base":
        return (slice(0, None, s), slice(0, None, s)), []
    if kind == "A":
        rs, cs = slice(0, None, g), slice(s, None, g)
    elif kind == "B":
        rs, cs = slice(s, None, g), slice(0, None, g)
    else:
        rs, cs = slice(s, None, g), slice(s, None, g)
    tgt = rec[:, rs, cs]
    nr, nc = tgt.shape[1], tgt.shape[2]
    out: list[np.ndarray] = []
    if kind in ("A", "C"):  # left / right
        left = rec[:, rs, 0::g][:, :, :nc]
        right = rec[:, rs, g::g][:, :, :nc]
        if right.shape[2] < nc:
            right = np.concatenate([right, left[:, :, right.shape[2] :]], axis=2)
        out += [left, right]
    if kind in ("B", "C"):  # up / down
        up = rec[:, 0::g, cs][:, :nr, :]
        down = rec[:, g::g, cs][:, :nr, :]
        if down.shape[1] < nr:
            down = np.concatenate([down, up[:, down.shape[1] :, :]], axis=1)
        out += [up, down]
    return (rs, cs), out


def _predict(
    vals: list[np.ndarray], alpha: float, inv_step: np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Prediction (alpha x mean of decoded neighbours) and activity class from their spread."""
    if len(vals) == 2:
        mean = (vals[0] + vals[1]) * np.float32(0.5)
        spread = np.abs(vals[0] - vals[1])
    else:
        mean = (vals[0] + vals[1] + vals[2] + vals[3]) * np.float32(0.25)
        spread = np.maximum(np.abs(vals[0] - vals[1]), np.abs(vals[2] - vals[3]))
    pred = mean * np.float32(alpha)
    a = spread * inv_step
    cls = (a >= 1).astype(np.int64) + (a >= 2) + (a >= 4) + (a >= 8)
    return pred, cls


def _group_of(k: int) -> np.ndarray:
    """Component group per KLT component: the strongest quarter, then the rest."""
    g = np.ones(k, dtype=np.int64)
    g[: max(1, k // 4)] = 0
    return g


def _n_contexts(n_phases: int) -> int:
    return 1 + (n_phases - 1) // 3 * _N_GROUPS * _N_ACT


def _lanes(n: int) -> int:
    """Interleaved rANS lanes: ~400 symbols per lane keeps the 4-byte lane states cheap."""
    lanes = 32
    while lanes < 4096 and lanes * 2 * 400 <= n:
        lanes *= 2
    return lanes


def _freq_tables(sym: np.ndarray, ctx: np.ndarray, n_ctx: int) -> np.ndarray:
    """Per-context symbol frequencies summing to 2**12, every seen symbol at least 1."""
    counts = np.bincount(ctx * _ALPHABET + sym, minlength=n_ctx * _ALPHABET)
    counts = counts.reshape(n_ctx, _ALPHABET)
    freq = np.zeros_like(counts)
    for c in range(n_ctx):
        tot = int(counts[c].sum())
        if tot == 0:
            freq[c, 0] = _PROB_ONE
            continue
        f = np.where(counts[c] > 0, np.maximum(1, counts[c] * _PROB_ONE // tot), 0)
        f[int(np.argmax(f))] += _PROB_ONE - int(f.sum())
        freq[c] = f
    return freq


def _tables_bytes(freq: np.ndarray) -> bytes:
    parts = []
    for row in freq:
        used = int(np.flatnonzero(row).max()) + 1
        parts.append(bytes([used]) + row[:used].astype("<u2").tobytes())
    return b"".join(parts)


def _tables_parse(data: bytes, n_ctx: int) -> np.ndarray:
    freq = np.zeros((n_ctx, _ALPHABET), dtype=np.int64)
    pos = 0
    for c in range(n_ctx):
        if pos >= len(data):
            raise CodecError("corrupt payload (frequency tables)")
        used = data[pos]
        pos += 1
        if not 1 <= used <= _ALPHABET or pos + 2 * used > len(data):
            raise CodecError("corrupt payload (frequency tables)")
        freq[c, :used] = np.frombuffer(data, dtype="<u2", count=used, offset=pos)
        pos += 2 * used
        if int(freq[c].sum()) != _PROB_ONE:
            raise CodecError("corrupt payload (frequency tables)")
    if pos != len(data):
        raise CodecError("corrupt payload (frequency tables)")
    return freq


def _rans_encode(
    phases: list[tuple[np.ndarray, np.ndarray]], freq: np.ndarray, lanes: int
) -> tuple[bytes, bytes]:
    """Interleaved rANS over all phases; returns (lane start states, word stream).

    Symbol j of a phase goes to lane j % lanes; the decoder walks phases and steps forward,
    so the encoder walks them backwards and reverses its blocks of emitted words.
    """
    cum = np.concatenate([np.zeros((freq.shape[0], 1), np.int64), np.cumsum(freq, 1)[:, :-1]], 1)
    state = np.full(lanes, _RANS_LOW, dtype=np.uint64)
    blocks: list[np.ndarray] = []
    for sym, ctx in reversed(phases):
        n = sym.size
        f_all = freq[ctx, sym].astype(np.uint64)
        c_all = cum[ctx, sym].astype(np.uint64)
        for start in reversed(range(0, n, lanes)):
            k = min(lanes, n - start)
            x = state[:k]
            f = f_all[start : start + k]
            c = c_all[start : start + k]
            emit = x >= (f << np.uint64(20))
            blocks.append((x[emit] & np.uint64(0xFFFF)).astype("<u2"))
            x = np.where(emit, x >> np.uint64(16), x)
            state[:k] = ((x // f) << np.uint64(_PROB_BITS)) + (x % f) + c
    words = b"".join(b.tobytes() for b in reversed(blocks))
    return state.astype("<u4").tobytes(), words


class _RansDecoder:
    def __init__(self, states: bytes, words: bytes, freq: np.ndarray, lanes: int) -> None:
        if len(states) != 4 * lanes or len(words) % 2:
            raise CodecError("corrupt payload (rANS streams)")
        self.state = np.frombuffer(states, dtype="<u4").astype(np.uint64)
        self.words = np.frombuffer(words, dtype="<u2").astype(np.uint64)
        self.ptr = 0
        self.lanes = lanes
        self.freq = freq.astype(np.uint64)
        self.cum = np.concatenate(
            [np.zeros((freq.shape[0], 1), np.uint64), np.cumsum(self.freq, 1)[:, :-1]], 1
        )
        # slot -> symbol lookup per context
        self.lut = np.empty((freq.shape[0], _PROB_ONE), dtype=np.int64)
        for c in range(freq.shape[0]):
            self.lut[c] = np.repeat(np.arange(_ALPHABET), freq[c])

    def decode(self, ctx: np.ndarray) -> np.ndarray:
        n = ctx.size
        out = np.empty(n, dtype=np.int64)
        mask = np.uint64(_PROB_ONE - 1)
        for start in range(0, n, self.lanes):
            k = min(self.lanes, n - start)
            cx = ctx[start : start + k]
            x = self.state[:k]
            slot = x & mask
            s = self.lut[cx, slot]
            x = self.freq[cx, s] * (x >> np.uint64(_PROB_BITS)) + slot - self.cum[cx, s]
            need = np.flatnonzero(x < np.uint64(_RANS_LOW))
            if need.size:
                end = self.ptr + need.size
                if end > self.words.size:
                    raise CodecError("corrupt payload (rANS stream too short)")
                x[need] = (x[need] << np.uint64(16)) | self.words[self.ptr : end]
                self.ptr = end
            self.state[:k] = x
            out[start : start + k] = s
        return out

    def finish(self) -> None:
        if self.ptr != self.words.size or np.any(self.state != _RANS_LOW):
            raise CodecError("corrupt payload (rANS did not end where it started)")


class PredictiveCodec(Codec):
    """Channel KLT + closed-loop hierarchical prediction + context rANS (see module doc)."""

    lossless = False

    def __init__(
        self, name: str, step: float, weights: Sequence[float] | None = None, klt: bool = True
    ) -> None:
        if not step > 0:
            raise ValueError("step must be positive")
        self.name = name
        self.step = float(np.float32(step))
        self.weights = None if weights is None else tuple(float(v) for v in weights)
        self.klt = klt

    def with_step(self, step: float) -> PredictiveCodec:
        """The same codec at another step (what `encode_to_target` searches over)."""
        return PredictiveCodec(self.name, step, self.weights, self.klt)

    # -- transform -------------------------------------------------------------------------
    def _transform(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        c = x.shape[0]
        flat = x.reshape(c, -1).astype(np.float64)
        mean = flat.mean(axis=1).astype(np.float32)
        if self.weights is not None and len(self.weights) == c:
            gain = np.sqrt(np.asarray(self.weights, dtype=np.float64)).astype(np.float32)
        else:
            gain = np.ones(c, dtype=np.float32)
        z = (flat - mean[:, None].astype(np.float64)) * gain[:, None].astype(np.float64)
        params: dict[str, Any] = {"mean": _f32_list(mean), "gain": _f32_list(gain)}
        if not self.klt or c == 1:
            return z.astype(np.float32).reshape(x.shape), params
        cov = (z @ z.T) / z.shape[1]
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(-evals, kind="stable")
        v = evecs[:, order]
        # Deterministic signs: the largest-magnitude entry of each column positive.
        idx = np.argmax(np.abs(v), axis=0)
        v = v * np.sign(v[idx, np.arange(c)])[None, :]
        v16 = v.astype(np.float16)
        if not np.isfinite(v16).all() or abs(np.linalg.det(v16.astype(np.float64))) < 1e-3:
            return z.astype(np.float32).reshape(x.shape), params
        y = np.linalg.solve(v16.astype(np.float64), z)
        params["klt"] = v16.tobytes().hex()
        return y.astype(np.float32).reshape(x.shape), params

    @staticmethod
    def _inverse(y: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        c = y.shape[0]
        mean = _f32_param(params, "mean", c)
        gain = _f32_param(params, "gain", c)
        if np.any(gain <= 0):
            raise CodecError("codec param 'gain' must be positive")
        flat = y.reshape(c, -1)
        if "klt" in params:
            try:
                v = np.frombuffer(bytes.fromhex(params["klt"]), dtype=np.float16)
            except (TypeError, ValueError):
                raise CodecError("codec param 'klt' is not hex") from None
            if v.size != c * c or not np.isfinite(v).all():
                raise CodecError("codec param 'klt' has the wrong size")
            z = (v.reshape(c, c).astype(np.float64) @ flat.astype(np.float64)).astype(np.float32)
        else:
            z = flat
        x = z / gain[:, None] + mean[:, None]
        return x.reshape(y.shape)

    # -- prediction --------------------------------------------------------------------------
    @staticmethod
    def _alphas(y: np.ndarray, order: list[tuple[int, str]]) -> list[float]:
        """Per phase, the least-squares shrink of the neighbour mean (open loop, 1/64 steps)."""
        out = []
        for s, kind in order:
            (rs, cs), nbrs = _neighbours(y, s, kind)
            t = y[:, rs, cs].astype(np.float64)
            if not nbrs or t.size == 0:
                out.append(0.0)
                continue
            m = sum(v.astype(np.float64) for v in nbrs) / len(nbrs)
            den = float((m * m).sum())
            a = float((m * t).sum()) / den if den > 0 else 0.0
            out.append(round(min(max(a, 0.0), 1.0) * 64) / 64)
        return out

    def _loop(
        self,
        shape: tuple[int, int, int],
        alphas: list[float],
        y: np.ndarray | None = None,
        dec: _RansDecoder | None = None,
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """The closed loop: with `y`, quantise (encoder); with `dec`, read symbols (decoder).

        Both build the same reconstruction; returns it and, when encoding, (symbols, contexts)
        per phase.
        """
        k = shape[0]
        step = np.float32(self.step)
        inv = np.float32(1.0) / step
        order = _phases(shape[1], shape[2])
        groups = _group_of(k)[:, None, None] * _N_ACT
        rec = np.zeros(shape, dtype=np.float32)
        coded: list[tuple[np.ndarray, np.ndarray]] = []
        for pi, (s, kind) in enumerate(order):
            (rs, cs), nbrs = _neighbours(rec, s, kind)
            tshape = rec[:, rs, cs].shape
            if kind == "base":
                pred = np.zeros(tshape, dtype=np.float32)
                ctx = np.zeros(tshape, dtype=np.int64)
            else:
                pred, cls = _predict(nbrs, alphas[pi], inv)
                level = (pi - 1) // 3
                ctx = 1 + level * _N_GROUPS * _N_ACT + groups + cls
            ctx = ctx.reshape(-1)
            if y is not None:
                q = np.rint((y[:, rs, cs] - pred) / step)
                q = np.clip(q, -(2**30), 2**30).astype(np.int64)
                coded.append((q.reshape(-1), ctx))
            else:
                assert dec is not None
                q = _unzigzag(dec.decode(ctx)).reshape(tshape)
            rec[:, rs, cs] = pred + q.astype(np.float32) * step
        return rec, coded

    def encode(self, latent: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
        x = _check_latent(latent).float().numpy()
        y, params = self._transform(x)
        order = _phases(*y.shape[1:])
        alphas = self._alphas(y, order)
        _, coded = self._loop(y.shape, alphas, y=y)  # type: ignore[arg-type]
        n_ctx = _n_contexts(len(order))
        phases, escapes = [], []
        for q, ctx in coded:
            z = _zigzag(q)
            big = z >= _ALPHABET - 1
            escapes.append(z[big] - (_ALPHABET - 1))
            phases.append((np.minimum(z, _ALPHABET - 1), ctx))
        all_sym = np.concatenate([p[0] for p in phases])
        all_ctx = np.concatenate([p[1] for p in phases])
        freq = _freq_tables(all_sym, all_ctx, n_ctx)
        lanes = _lanes(all_sym.size)
        states, words = _rans_encode(phases, freq, lanes)
        esc = np.concatenate(escapes).astype("<u4").tobytes()
        side = _zc(_tables_bytes(freq) + esc)
        head = struct.pack("<IIII", lanes, len(side), len(_tables_bytes(freq)), len(words))
        payload = head + side + states + words
        params.update({"step": self.step, "alpha": alphas, "v": 2})
        return payload, params

    def decode(
        self, payload: bytes, params: dict[str, Any], shape: tuple[int, ...], dtype: str
    ) -> torch.Tensor:
        c, h, w = _shape3(shape)
        dt = torch_dtype(dtype)
        if params.get("v") != 2:
            raise CodecError("predictive params of an unknown version")
        try:
            step = float(params["step"])
            alphas = [float(a) for a in params["alpha"]]
        except (KeyError, TypeError, ValueError):
            raise CodecError("predictive params lack step/alpha") from None
        order = _phases(h, w)
        if not step > 0 or not math.isfinite(step) or len(alphas) != len(order):
            raise CodecError("predictive params do not fit the shape")
        if len(payload) < 16:
            raise CodecError("corrupt payload (too short)")
        lanes, n_side, n_tab, n_words = struct.unpack_from("<IIII", payload, 0)
        if lanes != _lanes(c * h * w) or 16 + n_side + 4 * lanes + n_words != len(payload):
            raise CodecError("corrupt payload (section lengths)")
        side = _zd(payload[16 : 16 + n_side], 4 * c * h * w + 8192)
        pos = 16 + n_side
        states, words = payload[pos : pos + 4 * lanes], payload[pos + 4 * lanes :]
        if n_tab > len(side) or (len(side) - n_tab) % 4:
            raise CodecError("corrupt payload (side data)")
        freq = _tables_parse(side[:n_tab], _n_contexts(len(order)))
        esc = np.frombuffer(side[n_tab:], dtype="<u4").astype(np.int64) + (_ALPHABET - 1)
        dec = _EscapingDecoder(states, words, freq, lanes, esc)
        y, _ = self.with_step(step)._loop((c, h, w), alphas, dec=dec)
        dec.finish()
        x = self._inverse(y, params)
        return torch.from_numpy(np.ascontiguousarray(x)).to(dt)


class _EscapingDecoder(_RansDecoder):
    """rANS symbols with the escape symbol replaced by the next side-stream value."""

    def __init__(
        self, states: bytes, words: bytes, freq: np.ndarray, lanes: int, esc: np.ndarray
    ) -> None:
        super().__init__(states, words, freq, lanes)
        self.esc = esc
        self.eptr = 0

    def decode(self, ctx: np.ndarray) -> np.ndarray:
        z = super().decode(ctx)
        big = np.flatnonzero(z == _ALPHABET - 1)
        if big.size:
            end = self.eptr + big.size
            if end > self.esc.size:
                raise CodecError("corrupt payload (escape stream too short)")
            z[big] = self.esc[self.eptr : end]
            self.eptr = end
        return z

    def finish(self) -> None:
        super().finish()
        if self.eptr != self.esc.size:
            raise CodecError("corrupt payload (escape stream too long)")


# Steps of the predictive presets (gain-weighted KLT domain). With TAEF2 weights on the study
# corpus (docs/codec-study.md): q4p ~ 42 dB image PSNR (safe for the 40 dB admission default),
# q3p ~ 40 dB, q6p and q8p for higher fidelity. Use `encode_to_target` to hit a PSNR exactly.
PREDICTIVE_STEPS: dict[str, float] = {"q8p": 0.025, "q6p": 0.1, "q4p": 0.3, "q3p": 0.4}
CODEC_NAMES = ("lossless", "q8", "q6", "q4", *PREDICTIVE_STEPS)


def get_codec(name: str, *, model: str | None = None) -> Codec:
    """The codec called `name`; `model` picks per-channel weights for the predictive ones."""
    if name == "lossless":
        return LosslessCodec()
    if name in ("q8", "q6", "q4"):
        return AffineCodec(int(name[1:]))
    if name in PREDICTIVE_STEPS:
        weights = CHANNEL_WEIGHTS.get(model) if model else None
        return PredictiveCodec(name, PREDICTIVE_STEPS[name], weights)
    raise CodecError(f"unknown codec {name!r}; known: {', '.join(CODEC_NAMES)}")


def encode_to_target(
    codec: PredictiveCodec,
    latent: torch.Tensor,
    fidelity: Callable[[torch.Tensor], float],
    target: float,
    steps: Sequence[float] = (1.0, 0.8, 0.6, 0.45, 0.34, 0.25, 0.18, 0.13, 0.09),
) -> tuple[bytes, dict[str, Any], float]:
    """The coarsest step (fewest bytes) whose decoded latent still scores `fidelity` >= target.

    `fidelity` maps a decoded latent to a score (image PSNR against the upload, at admission).
    Bisects over `steps` (coarse to fine); falls back to `codec`'s own step if none passes.
    Returns payload, params and the score reached.
    """
    ladder = sorted({float(s) for s in steps}, reverse=True)
    shape, dt = tuple(latent.shape), dtype_name(latent.dtype)
    cache: dict[int, tuple[bytes, dict[str, Any], float]] = {}

    def trial(i: int) -> tuple[bytes, dict[str, Any], float]:
        if i not in cache:
            c = codec.with_step(ladder[i])
            payload, params = c.encode(latent)
            cache[i] = (payload, params, float(fidelity(c.decode(payload, params, shape, dt))))
        return cache[i]

    lo, hi = 0, len(ladder) - 1  # find the smallest i (coarsest) that passes
    if trial(hi)[2] < target:
        payload, params = codec.encode(latent)
        return payload, params, float(fidelity(codec.decode(payload, params, shape, dt)))
    while lo < hi:
        mid = (lo + hi) // 2
        if trial(mid)[2] >= target:
            hi = mid
        else:
            lo = mid + 1
    return trial(lo)
