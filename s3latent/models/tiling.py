"""Tiled decoding: bounded memory for any latent shape, with deterministic bytes.

Why: an untiled decode's activations grow with the image (a 4096² TAEF2 decode peaked at
12.8 GB). A tiled decode runs the model on overlapping latent tiles and blends their outputs,
so its peak is one tile's activations plus the output image.

Determinism: how a latent is tiled (`Tiling`: core tile size and overlap, in latent pixels) is
chosen once, at conversion, by `plan_tiling` (a pure function of the latent shape, the model's
memory per pixel and the settings), then recorded in the container. Reads use the recorded
tiling, never today's settings; a container without one decodes untiled, as it always did.

Layout along each axis of n latent pixels: k = ceil(n / tile) cores split n evenly
(boundaries floor(i*n/k)); tile i decodes its core plus `overlap` latent pixels of context
on each inner side; around each core boundary b, the two tiles cross-fade linearly over
[b - overlap/2, b + overlap/2], so every output pixel is blended from tiles that saw at least
overlap/2 latent pixels of context around it. Weights of neighbours sum to one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Tiling",
    "blend_tiles",
    "estimate_decode_bytes",
    "plan_tiling",
    "tile_grid",
]

# Output-side buffers of a decode, bytes per image pixel: the float32 RGB accumulator and
# weight sum of a tiled decode (or the float output of an untiled one) and the uint8 copy.
OUTPUT_BYTES_PER_PX = 3 * 4 + 4 + 3
# Activation bytes per image pixel per model channel and dtype byte, when a decoder does not
# say: about four live full-resolution activations (measured on TAEF2: 1280² untiled peaked
# at ~1.5 GB above the process baseline, i.e. ~900 B/px for 64 fp32 channels).
ACTIVATIONS_PER_PX = 4
MIN_TILE = 16


@dataclass(frozen=True)
class Tiling:
    """Core tile size and overlap in latent pixels; recorded in the container header."""

    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.tile < 1 or self.overlap < 0 or (self.overlap and self.tile < 2 * self.overlap):
            raise ValueError(f"bad tiling {self}: need tile >= 2 * overlap >= 0, tile >= 1")

    def to_json(self) -> dict[str, int]:
        return {"tile": self.tile, "overlap": self.overlap}

    @classmethod
    def from_json(cls, value: Any) -> Tiling | None:
        """None (untiled) for an absent value; ValueError for a malformed one."""
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) != {"tile", "overlap"}:
            raise ValueError(f"bad tiling record {value!r}")
        tile, overlap = value["tile"], value["overlap"]
        if not (isinstance(tile, int) and isinstance(overlap, int)):
            raise ValueError(f"bad tiling record {value!r}")
        return cls(tile, overlap)

    def describe(self) -> str:
        """Stable text for the render profile."""
        return f"tiled-{self.tile}-{self.overlap}-linear"


def tile_grid(n: int, tile: int) -> list[tuple[int, int]]:
    """Core [start, end) ranges covering n latent pixels, at most `tile` each, evenly split."""
    k = max(1, -(-n // tile))
    return [((i * n) // k, ((i + 1) * n) // k) for i in range(k)]


def _axis_weights(core: tuple[int, int], extent: tuple[int, int], n: int, overlap: int,
                  scale: int) -> torch.Tensor:
    """float64 weights of one tile along one axis, at output (image) resolution."""
    start, end = core
    u = (torch.arange((extent[1] - extent[0]) * scale, dtype=torch.float64) + 0.5) / scale
    u = u + extent[0]
    w = torch.ones_like(u)
    if start > 0:
        w = w * (((u - start) / overlap + 0.5).clamp(0, 1) if overlap else (u >= start).double())
    if end < n:
        w = w * (((end - u) / overlap + 0.5).clamp(0, 1) if overlap else (u < end).double())
    return w


def blend_tiles(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                tiling: Tiling, scale: int) -> torch.Tensor:
    """Decode [B, C, h, w] tile by tile with `decode` (a tile in, its pixels out) and blend.

    `decode` must map [B, C, th, tw] to [B, 3, th*scale, tw*scale]. Tiles run one at a time in a
    fixed order and the weights are fixed by the layout alone, so the result is deterministic.
    Returns float32 [B, 3, h*scale, w*scale].
    """
    b, _, h, w = z.shape
    out = torch.zeros(b, 3, h * scale, w * scale, dtype=torch.float32, device=z.device)
    weight = torch.zeros(1, 1, h * scale, w * scale, dtype=torch.float32, device=z.device)
    o = tiling.overlap
    for ys in tile_grid(h, tiling.tile):
        ye = (max(0, ys[0] - o), min(h, ys[1] + o))
        wy = _axis_weights(ys, ye, h, o, scale)
        for xs in tile_grid(w, tiling.tile):
            xe = (max(0, xs[0] - o), min(w, xs[1] + o))
            wx = _axis_weights(xs, xe, w, o, scale)
            pixels = decode(z[:, :, ye[0]:ye[1], xe[0]:xe[1]]).float()
            wt = (wy[:, None] * wx[None, :]).float().to(z.device)
            # the blend band sits inside the extent; rows/cols with zero weight add nothing
            region = (slice(None), slice(None), slice(ye[0] * scale, ye[1] * scale),
                      slice(xe[0] * scale, xe[1] * scale))
            out[region] += pixels * wt
            weight[region] += wt
            del pixels
    return out.div_(weight)


def estimate_decode_bytes(h: int, w: int, downscale: int, act_bytes_per_px: int,
                          tiling: Tiling | None, batch: int = 1) -> int:
    """Rough peak memory of decoding `batch` latents of h x w (activations + output buffers).

    Activations scale with the pixels decoded at once (one tile's extent when tiled); outputs
    with the whole image. Conservative: meant for a budget, not for accounting.
    """
    pixels = h * w * downscale * downscale
    if tiling is None:
        active = pixels * batch
    else:
        th = min(h, tiling.tile + 2 * tiling.overlap)
        tw = min(w, tiling.tile + 2 * tiling.overlap)
        active = th * tw * downscale * downscale * batch
    return act_bytes_per_px * active + OUTPUT_BYTES_PER_PX * pixels * batch


def plan_tiling(h: int, w: int, downscale: int, act_bytes_per_px: int, *, tile: int,
                overlap: int, budget: int) -> Tiling | None:
    """How a new conversion of an h x w latent decodes: untiled, or the `Tiling` to record.

    Untiled when both sides fit one tile and the untiled estimate fits the budget; else tiled
    with `tile` (halved, down to MIN_TILE, while one tile's estimate exceeds the budget). A pure
    function of its arguments: the same shape and settings always give the same answer.
    """
    if tile <= 0:  # tiling switched off
        return None
    if max(h, w) <= tile and estimate_decode_bytes(h, w, downscale, act_bytes_per_px,
                                                   None) <= budget:
        return None
    size = tile
    while size > MIN_TILE and estimate_decode_bytes(
            h, w, downscale, act_bytes_per_px, Tiling(size, min(overlap, size // 2))) > budget:
        size //= 2
    size = max(size, MIN_TILE)
    return Tiling(size, min(overlap, size // 2))


# Activation bytes per image pixel by model kind, at float32, for planning a conversion's tiling
# before (or without) loading the model: the decision must not depend on the device or dtype.
ACT_BYTES_BY_KIND = {"tae": 4 * 64 * 4, "diffusers": 8 * 128 * 4}
# Default overlap by model kind (latent pixels). TAE tiles only their local upsampling tail,
# which sees about 9 latent pixels around an output pixel: 8 (4 of context past the blend band)
# gave a PSNR above 160 dB against untiled on TAEF2. A full VAE tiles its attention and
# GroupNorm too, so it gets more room to blend.
OVERLAP_BY_KIND = {"tae": 8, "diffusers": 16}


def default_overlap(kind: str) -> int:
    """The overlap used when the setting says auto (negative)."""
    return OVERLAP_BY_KIND.get(kind, OVERLAP_BY_KIND["diffusers"])


def planning_act_bytes_per_px(kind: str) -> int:
    """The float32 activation figure `plan_tiling` uses for a model kind."""
    return ACT_BYTES_BY_KIND.get(kind, ACT_BYTES_BY_KIND["diffusers"])


def decoder_act_bytes_per_px(decoder: Any) -> int:
    """A decoder's activation bytes per image pixel (its own figure, else a generic one)."""
    own = getattr(decoder, "act_bytes_per_px", None)
    if isinstance(own, int) and own > 0:
        return own
    return 64 * ACTIVATIONS_PER_PX * 4
