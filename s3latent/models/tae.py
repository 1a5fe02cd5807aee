"""Tiny autoencoders of the TAESD family (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2) in plain torch.

Why plain torch: these decoders are a few MB, load from a bare state dict, and must work with no
hub and no diffusers model class (TAEF2 has none). The module layout is fixed by the published
weights: top-level ``nn.Sequential`` indices, blocks with ``conv``/``skip``/``fuse`` and, in
TAEF2, a ``pool`` branch (1x1 conv -> GroupNorm -> ReLU -> 1x1 conv, added to the block input) in
the three lowest-resolution blocks of the decoder and encoder. The GroupNorm gives those blocks
statistics of the whole image, which FLUX.2's VAE needed for an accurate distillation.

Conventions (as TAESD's): images are RGB in [0, 1]; the decoder clamps its input softly to about
±3 and takes the latents the diffusion pipeline hands to its VAE as they are (scale 1, shift 0).
For FLUX.2 that is the [B, 32, h, w] tensor Flux2Pipeline passes to ``vae.decode`` (after undoing
its batch-norm and 2x2 patching).

Weights load from ``.pth``/``.pt`` (torch.load, weights only) or ``.safetensors`` files in either
the original layout (``1.weight``, ``3.conv.0.weight`` ...) or diffusers' AutoencoderTiny layout
(``decoder.layers.0.weight`` ..., as in the hub repositories), and always with strict=True.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .tiling import Tiling, blend_tiles

__all__ = [
    "TAE_ARCHS",
    "TAEArch",
    "TAEDecoder",
    "build_random_tae",
    "build_tae_decoder",
    "build_tae_encoder",
    "load_tae",
    "load_tae_state_dict",
]


@dataclass(frozen=True)
class TAEArch:
    """Shape of one TAESD-family model: what differs between the published variants."""

    latent_channels: int
    midblock_norm: bool = False  # TAEF2's GroupNorm pooling branch
    width: int = 64
    downscale: int = 8


TAE_ARCHS: dict[str, TAEArch] = {
    "taesd": TAEArch(latent_channels=4),
    "taesdxl": TAEArch(latent_channels=4),
    "taesd3": TAEArch(latent_channels=16),
    "taef1": TAEArch(latent_channels=16),
    "taef2": TAEArch(latent_channels=32, midblock_norm=True),
}


def _conv3(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size=3, stride=stride, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """Keeps out-of-range latents (off-distribution sampler output) from blowing up the decoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3.0) * 3.0


class TAEBlock(nn.Module):
    """Residual block of three 3x3 convs; optional whole-image GroupNorm branch (TAEF2)."""

    def __init__(self, channels: int, midblock_norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv3(channels, channels),
            nn.ReLU(),
            _conv3(channels, channels),
            nn.ReLU(),
            _conv3(channels, channels),
        )
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool: nn.Sequential | None = None
        if midblock_norm:
            hidden = channels * 4
            self.pool = nn.Sequential(
                nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
                nn.GroupNorm(4, hidden),
                nn.ReLU(),
                nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


# Decoder layers before the first upsampling: SoftClamp, conv, ReLU and three blocks.
_HEAD_LAYERS = 6


def build_tae_decoder(arch: TAEArch) -> nn.Sequential:
    """Latents -> RGB in [0, 1]; three 2x nearest upsamplings (the /8 of the VAEs it mimics)."""
    w, mb = arch.width, arch.midblock_norm
    layers: list[nn.Module] = [SoftClamp(), _conv3(arch.latent_channels, w), nn.ReLU()]
    for stage in range(3):
        layers += [TAEBlock(w, mb and stage == 0) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), _conv3(w, w, bias=False)]
    layers += [TAEBlock(w), _conv3(w, 3)]
    return nn.Sequential(*layers)


def build_tae_encoder(arch: TAEArch) -> nn.Sequential:
    """RGB in [0, 1] -> latents; three stride-2 convs."""
    w, mb = arch.width, arch.midblock_norm
    layers: list[nn.Module] = [_conv3(3, w), TAEBlock(w)]
    for stage in range(3):
        layers.append(_conv3(w, w, stride=2, bias=False))
        layers += [TAEBlock(w, mb and stage == 2) for _ in range(3)]
    layers.append(_conv3(w, arch.latent_channels))
    return nn.Sequential(*layers)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: not a state dict (got {type(obj).__name__})")
    return dict(obj)


def load_tae_state_dict(path: str | Path, part: str) -> dict[str, torch.Tensor]:
    """The `part` ("decoder" or "encoder") of a weights file, keyed as our modules expect.

    Returns an empty dict when the file is a combined diffusers-layout file without that part.
    """
    if part not in ("decoder", "encoder"):
        raise ValueError(f"part must be 'decoder' or 'encoder', not {part!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    raw = _read_tensors(path)
    if not any(k.startswith(("decoder.", "encoder.")) for k in raw):
        return raw
    # diffusers AutoencoderTiny layout: "<part>.layers.<i>.<rest>"; its decoder applies the soft
    # clamp in forward() instead of as layer 0, so decoder indices are one lower than ours.
    offset = 1 if part == "decoder" else 0
    out: dict[str, torch.Tensor] = {}
    prefix = f"{part}."
    for key, value in raw.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if rest.startswith("layers."):
            rest = rest[len("layers.") :]
        index, _, suffix = rest.partition(".")
        if not index.isdigit():
            raise ValueError(f"{path}: unexpected key {key!r}")
        out[f"{int(index) + offset}.{suffix}"] = value
    return out


def infer_tae_arch(decoder_state: Mapping[str, torch.Tensor]) -> TAEArch:
    """Guess the variant from the weights, for config entries that name no arch."""
    first = decoder_state.get("1.weight")
    if first is None or first.ndim != 4:
        raise ValueError("not a TAESD-family decoder state dict (no 1.weight conv)")
    return TAEArch(
        latent_channels=int(first.shape[1]),
        midblock_norm="3.pool.0.weight" in decoder_state,
        width=int(first.shape[0]),
    )


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # torch's message lists every missing/unexpected key; keep the head of it readable
        msg = str(exc).replace("\n\t", " ")
        raise ValueError(f"{what} weights do not fit the architecture: {msg[:600]}") from exc


class TAEDecoder(nn.Module):
    """A loaded TAESD-family model implementing `LatentDecoder`."""

    def __init__(
        self,
        model_id: str,
        arch: TAEArch,
        decoder: nn.Sequential,
        encoder: nn.Sequential | None,
        device: torch.device,
        dtype: torch.dtype,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ) -> None:
        super().__init__()
        self.model_id = model_id
        self.arch = arch
        self.latent_channels = arch.latent_channels
        self.downscale = arch.downscale
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.decoder = decoder
        self.encoder = encoder
        self.device = device
        self.dtype = dtype
        # channels_last on CPU too: oneDNN runs these 64-channel convs ~1.5x faster in NHWC
        self._channels_last = True
        # CPU renditions must not depend on which requests a batch happened to group
        self.batch_invariant = device.type == "cpu"

    def _prepare(self, x: torch.Tensor, channels: int, what: str) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"{self.model_id}: {what} must be [B, {channels}, H, W], got {tuple(x.shape)}"
            )
        x = x.to(device=self.device, dtype=self.dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _decoder_input(self, latents: torch.Tensor) -> torch.Tensor:
        """Pipeline latents as the decoder takes them: checked, unscaled and shifted."""
        z = self._prepare(latents, self.latent_channels, "latents")
        if self.scaling_factor != 1.0 or self.shift_factor != 0.0:
            z = z / self.scaling_factor + self.shift_factor
        return z

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pipeline latents [B, C, h, w] -> RGB [B, 3, 8h, 8w], about [0, 1], model dtype."""
        z = self._decoder_input(latents)
        if self.batch_invariant and z.shape[0] > 1:
            # oneDNN picks kernels by batch size; one at a time keeps bytes batch-independent
            return torch.cat([self.decoder(z[i : i + 1]) for i in range(z.shape[0])])
        return self.decoder(z)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, H, W] in [0, 1] -> pipeline latents; H and W multiples of 8."""
        if self.encoder is None:
            raise RuntimeError(f"{self.model_id}: no encoder weights were loaded")
        x = self._prepare(images, 3, "images")
        if x.shape[-1] % self.downscale or x.shape[-2] % self.downscale:
            raise ValueError(f"{self.model_id}: image sides must be multiples of {self.downscale}")
        z = self.encoder(x)
        if self.scaling_factor != 1.0 or self.shift_factor != 0.0:
            z = (z - self.shift_factor) * self.scaling_factor
        return z

    @property
    def act_bytes_per_px(self) -> int:
        """Activation bytes per output pixel, for memory estimates (about four live maps)."""
        return 4 * self.arch.width * torch.finfo(self.dtype).bits // 8

    @torch.inference_mode()
    def decode_tiled(self, latents: torch.Tensor, tiling: Tiling) -> torch.Tensor:
        """Like `decode`, with bounded memory: the latent-resolution head runs on the whole
        latent (TAEF2's GroupNorm branch keeps whole-image statistics), the upsampling tail,
        which holds nearly all the memory and sees only a few latent pixels around each
        output pixel, runs on overlapping tiles that are blended (`blend_tiles`)."""
        z = self._decoder_input(latents)
        head, tail = self.decoder[:_HEAD_LAYERS], self.decoder[_HEAD_LAYERS:]

        def run_tail(t: torch.Tensor) -> torch.Tensor:
            return tail(t.contiguous(memory_format=torch.channels_last))

        # one latent at a time: bytes independent of batching, as in `decode`
        return torch.cat([blend_tiles(run_tail, head(z[i : i + 1]), tiling, self.downscale)
                          for i in range(z.shape[0])])

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode(latents)


def _resolve_arch(arch: str | TAEArch, decoder_state: Mapping[str, torch.Tensor]) -> TAEArch:
    if isinstance(arch, TAEArch):
        return arch
    if arch in ("", "auto"):
        return infer_tae_arch(decoder_state)
    try:
        return TAE_ARCHS[arch]
    except KeyError:
        known = ", ".join(sorted(TAE_ARCHS))
        raise ValueError(f"unknown TAE arch {arch!r} (known: {known}, or 'auto')") from None


def load_tae(
    arch: str | TAEArch,
    decoder_path: str | Path,
    encoder_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    *,
    model_id: str | None = None,
    scaling_factor: float = 1.0,
    shift_factor: float = 0.0,
) -> TAEDecoder:
    """Build the named variant, load its weights strictly, and move it to `device`.

    `decoder_path` may be a combined diffusers-layout file; its encoder half is then loaded too
    unless `encoder_path` names another file. dtype defaults to fp32 on CPU and fp16 elsewhere.
    Raises FileNotFoundError/ValueError with the reason when the weights do not fit.
    """
    dev = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else torch.float16
    dec_state = load_tae_state_dict(decoder_path, "decoder")
    if not dec_state:
        raise ValueError(f"{decoder_path}: holds no decoder weights")
    spec = _resolve_arch(arch, dec_state)
    decoder = build_tae_decoder(spec)
    _load_strict(decoder, dec_state, f"{decoder_path}: decoder")

    encoder: nn.Sequential | None = None
    enc_state: dict[str, torch.Tensor] = {}
    if encoder_path is not None:
        enc_state = load_tae_state_dict(encoder_path, "encoder")
        if not enc_state:
            raise ValueError(f"{encoder_path}: holds no encoder weights")
    else:
        enc_state = _encoder_half_of_combined(Path(decoder_path))
    if enc_state:
        encoder = build_tae_encoder(spec)
        _load_strict(encoder, enc_state, f"{encoder_path or decoder_path}: encoder")

    name = model_id or (arch if isinstance(arch, str) and arch not in ("", "auto") else "tae")
    model = TAEDecoder(name, spec, decoder, encoder, dev, dtype, scaling_factor, shift_factor)
    model.eval().requires_grad_(False)
    model.to(device=dev, dtype=dtype)
    model.to(memory_format=torch.channels_last)
    return model


def build_random_tae(
    arch: str | TAEArch,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    model_id: str | None = None,
    scaling_factor: float = 1.0,
    shift_factor: float = 0.0,
    seed: int = 0,
) -> TAEDecoder:
    """A TAE with seeded random weights: the real cost and shapes without the real weights."""
    spec = arch if isinstance(arch, TAEArch) else _resolve_arch(arch, {})
    dev = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else torch.float16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder, encoder = build_tae_decoder(spec), build_tae_encoder(spec)
    name = model_id or (arch if isinstance(arch, str) else "tae")
    model = TAEDecoder(name, spec, decoder, encoder, dev, dtype, scaling_factor, shift_factor)
    model.eval().requires_grad_(False)
    model.to(device=dev, dtype=dtype)
    model.to(memory_format=torch.channels_last)
    return model


def _encoder_half_of_combined(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if not any(k.startswith("encoder.") for k in f.keys()):
            return {}
    return load_tae_state_dict(path, "encoder")
