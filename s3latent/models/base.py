"""What the rest of s3latent needs from a latent decoder, whatever its family."""

from __future__ import annotations

from typing import Protocol

import torch

from .tiling import Tiling


class LatentDecoder(Protocol):
    """A loaded model that turns sidecar latents back into pixels.

    Latents are in the space the diffusion pipeline hands to its VAE (what a
    sidecar stores); the decoder applies its own scaling/shift. Output is float
    RGB in [0, 1] (not yet clamped), shape [B, 3, h*downscale, w*downscale].
    """

    model_id: str
    latent_channels: int
    downscale: int
    device: torch.device
    dtype: torch.dtype

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def decode_tiled(self, latents: torch.Tensor, tiling: Tiling) -> torch.Tensor:
        """`decode` in overlapping tiles (models/tiling.py): bounded memory, same shape out."""
        ...

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Inverse of decode where the model ships an encoder (tests, corpora)."""
        ...
