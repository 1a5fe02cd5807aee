"""Full VAE decoders (diffusers `AutoencoderKL` / `AutoencoderKLFlux2`) for SD 1.5, SDXL, SD 3.5,
FLUX.1 and FLUX.2 latents.

Why a wrapper: the gateway's decoders share one contract (`LatentDecoder`): sidecar latents in,
RGB in [0, 1] out. Sidecars hold what the pipeline has just before it calls ``vae.decode`` *minus*
the VAE's own scaling, i.e. the denoiser's latents: the wrapper applies
``z / scaling_factor + shift_factor`` the same way the diffusers pipelines do. FLUX.2 has no
scaling in its VAE config (its pipeline un-normalises with the VAE's batch-norm statistics and
un-patches 2x2 before ``vae.decode``); its sidecars hold the resulting [32, h, w] tensor, so its
scale is 1 and shift 0.

`random_weights=True` builds the full-size architecture from the known config with random
weights: tests and GPU benchmarks need the real cost without the real weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .tiling import Tiling, blend_tiles

__all__ = [
    "VAE_ARCHS",
    "VAEArch",
    "VAEDecoder",
    "WeightsNotFound",
    "build_random_vae",
    "load_autoencoder_kl",
]

_SD_BLOCKS = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
}


@dataclass(frozen=True)
class VAEArch:
    """A published VAE: its diffusers class, config and the pipeline's latent scaling."""

    cls_name: str  # "AutoencoderKL" or "AutoencoderKLFlux2"
    latent_channels: int
    scaling_factor: float
    shift_factor: float
    cuda_dtype: torch.dtype  # bf16 where fp16 is known to overflow
    config: dict[str, Any] = field(default_factory=dict)
    downscale: int = 8


VAE_ARCHS: dict[str, VAEArch] = {
    "sd15": VAEArch(
        "AutoencoderKL",
        4,
        0.18215,
        0.0,
        torch.float16,
        {**_SD_BLOCKS, "latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215},
    ),
    # SDXL's VAE produces inf/NaN in fp16 (hence madebyollin/sdxl-vae-fp16-fix); use bf16.
    "sdxl": VAEArch(
        "AutoencoderKL",
        4,
        0.13025,
        0.0,
        torch.bfloat16,
        {**_SD_BLOCKS, "latent_channels": 4, "sample_size": 1024, "scaling_factor": 0.13025},
    ),
    "sd35": VAEArch(
        "AutoencoderKL",
        16,
        1.5305,
        0.0609,
        torch.float16,
        {
            **_SD_BLOCKS,
            "latent_channels": 16,
            "sample_size": 1024,
            "scaling_factor": 1.5305,
            "shift_factor": 0.0609,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
    ),
    # FLUX.1/FLUX.2 pipelines run their VAEs in bf16 (force_upcast in their configs for fp16).
    "flux1": VAEArch(
        "AutoencoderKL",
        16,
        0.3611,
        0.1159,
        torch.bfloat16,
        {
            **_SD_BLOCKS,
            "latent_channels": 16,
            "sample_size": 1024,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
    ),
    "flux2": VAEArch(
        "AutoencoderKLFlux2",
        32,
        1.0,
        0.0,
        torch.bfloat16,
        {**_SD_BLOCKS, "latent_channels": 32, "sample_size": 1024, "patch_size": (2, 2)},
    ),
}


class WeightsNotFound(RuntimeError):
    """The weights are neither local nor fetchable (offline, no such repo, gated, ...)."""


def _vae_class(cls_name: str) -> type[nn.Module]:
    import diffusers

    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        raise RuntimeError(
            f"diffusers {diffusers.__version__} has no {cls_name}; upgrade diffusers"
        )
    return cls


def _arch(arch: str) -> VAEArch:
    try:
        return VAE_ARCHS[arch]
    except KeyError:
        known = ", ".join(sorted(VAE_ARCHS))
        raise ValueError(f"unknown diffusers VAE arch {arch!r} (known: {known})") from None


def build_random_vae(arch: str, config_overrides: dict[str, Any] | None = None) -> nn.Module:
    """The diffusers VAE of `arch` with random (seeded, reproducible) weights."""
    spec = _arch(arch)
    cls = _vae_class(spec.cls_name)
    config = {**spec.config, **(config_overrides or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return cls(**config)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now, not at import (huggingface_hub caches it when imported)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _from_pretrained(cls: Any, path: str, subfolder: str | None, dtype: torch.dtype) -> nn.Module:
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if subfolder:
        kwargs["subfolder"] = subfolder
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"{path}: a diffusers model is a folder (config.json + weights)")
        return cls.from_pretrained(str(local), **kwargs)
    if path.startswith(("/", ".", "~")) or path.count("/") != 1:
        raise WeightsNotFound(f"no such folder: {path} (and it is not a hub id 'org/name')")
    try:
        return cls.from_pretrained(path, local_files_only=hub_offline(), **kwargs)
    except Exception as exc:  # offline, unknown repo, gated, broken download: all "unavailable"
        where = f"{path}" + (f" (subfolder {subfolder})" if subfolder else "")
        mode = "the hub is offline (HF_HUB_OFFLINE)" if hub_offline() else "download failed"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsNotFound(f"{where}: {mode}: {first[:300]}") from exc


class VAEDecoder(nn.Module):
    """A loaded diffusers VAE implementing `LatentDecoder`."""

    def __init__(
        self,
        model_id: str,
        vae: nn.Module,
        latent_channels: int,
        scaling_factor: float,
        shift_factor: float,
        device: torch.device,
        dtype: torch.dtype,
        downscale: int = 8,
    ) -> None:
        super().__init__()
        self.model_id = model_id
        self.vae = vae
        self.latent_channels = latent_channels
        self.downscale = downscale
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.device = device
        self.dtype = dtype
        self._channels_last = device.type == "cuda"
        # CPU renditions must not depend on which requests a batch happened to group
        self.batch_invariant = device.type == "cpu"

    def _vae_input(self, latents: torch.Tensor) -> torch.Tensor:
        """Denoiser latents [B, C, h, w] (or [C, h, w]) as the VAE takes them: checked,
        unscaled and shifted in fp32, then cast (small scaling factors lose bits in fp16)."""
        if latents.ndim == 3:
            latents = latents.unsqueeze(0)
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"{self.model_id}: latents must be [B, {self.latent_channels}, h, w], "
                f"got {tuple(latents.shape)}"
            )
        z = latents.to(device=self.device, dtype=torch.float32)
        return (z / self.scaling_factor + self.shift_factor).to(self.dtype)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Denoiser latents [B, C, h, w] -> RGB [B, 3, 8h, 8w], about [0, 1], model dtype."""
        z = self._vae_input(latents)
        if self._channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        if self.batch_invariant and z.shape[0] > 1:
            # oneDNN picks kernels by batch size; one at a time keeps bytes batch-independent
            parts = [self.vae.decode(z[i : i + 1], return_dict=False)[0] for i in range(len(z))]
            out = torch.cat(parts)
        else:
            out = self.vae.decode(z, return_dict=False)[0]
        return out.mul_(0.5).add_(0.5)

    @property
    def act_bytes_per_px(self) -> int:
        """Activation bytes per output pixel, for memory estimates: the last up block runs
        128 channels at full resolution with GroupNorm/SiLU temporaries (about eight maps)."""
        return 8 * 128 * torch.finfo(self.dtype).bits // 8

    @torch.inference_mode()
    def decode_tiled(self, latents: torch.Tensor, tiling: Tiling) -> torch.Tensor:
        """Like `decode`, with bounded memory: the whole VAE runs on overlapping latent tiles
        whose outputs are blended (`blend_tiles`); its attention and GroupNorm see one tile."""
        z = self._vae_input(latents)

        def run(t: torch.Tensor) -> torch.Tensor:
            if self._channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            return self.vae.decode(t, return_dict=False)[0]

        out = torch.cat([blend_tiles(run, z[i : i + 1], tiling, self.downscale)
                         for i in range(z.shape[0])])
        return out.mul_(0.5).add_(0.5)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, H, W] in [0, 1] -> denoiser latents (the posterior's mode, deterministic)."""
        if images.ndim == 3:
            images = images.unsqueeze(0)
        x = images.to(device=self.device, dtype=self.dtype).mul(2.0).sub(1.0)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dist = self.vae.encode(x).latent_dist
        z = dist.mode().float()
        return (z - self.shift_factor) * self.scaling_factor

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode(latents)


def load_autoencoder_kl(
    arch: str,
    path: str | None = None,
    *,
    subfolder: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    model_id: str | None = None,
    scaling_factor: float | None = None,
    shift_factor: float | None = None,
    random_weights: bool = False,
    config_overrides: dict[str, Any] | None = None,
) -> VAEDecoder:
    """Load `arch`'s VAE from a local diffusers folder or a hub id (or build it randomly).

    Scaling defaults to the arch's published values, not the loaded config's, so a sidecar's
    meaning never depends on which copy of the weights a node found. dtype defaults to fp32 on
    CPU and the arch's CUDA dtype elsewhere. Raises WeightsNotFound when weights cannot be had.
    """
    spec = _arch(arch)
    dev = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else spec.cuda_dtype
    if random_weights:
        vae = build_random_vae(arch, config_overrides)
    else:
        if not path:
            raise WeightsNotFound(f"no weights location given for {model_id or arch}")
        vae = _from_pretrained(_vae_class(spec.cls_name), path, subfolder, dtype)
    channels = int(vae.config.latent_channels)
    downscale = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.eval().requires_grad_(False)
    # plain nn.Module.to: ModelMixin.to warns about fp32-pinned modules these VAEs do not have
    nn.Module.to(vae, device=dev, dtype=dtype)
    if dev.type == "cuda":
        nn.Module.to(vae, memory_format=torch.channels_last)
    return VAEDecoder(
        model_id or arch,
        vae,
        channels,
        spec.scaling_factor if scaling_factor is None else scaling_factor,
        spec.shift_factor if shift_factor is None else shift_factor,
        dev,
        dtype,
        downscale,
    )
