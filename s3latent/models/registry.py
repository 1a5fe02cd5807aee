"""Model registry: maps the model id a sidecar names to a loaded `LatentDecoder`.

Built-in ids (each fetched from its public hub repository on first use where a hub is
reachable, unless the config says where local weights are):

=========  =========  ====  ==================================================
id         kind       C     default weights
=========  =========  ====  ==================================================
sd15       diffusers  4     stable-diffusion-v1-5/stable-diffusion-v1-5, vae/
sdxl       diffusers  4     stabilityai/stable-diffusion-xl-base-1.0, vae/
sd35       diffusers  16    stabilityai/stable-diffusion-3.5-large, vae/
flux1      diffusers  16    black-forest-labs/FLUX.1-schnell, vae/
flux2      diffusers  32    black-forest-labs/FLUX.2-klein-4B, vae/ (AutoencoderKLFlux2)
taesd      tae        4     madebyollin/taesd
taesdxl    tae        4     madebyollin/taesdxl
taesd3     tae        16    madebyollin/taesd3
taef1      tae        16    madebyollin/taef1
taef2      tae        32    madebyollin/taef2 (taef2.safetensors)
=========  =========  ====  ==================================================

Config tables (``[models.<id>]`` in the TOML file) are merged over the built-ins; a new id needs
``kind`` and ``arch``. Keys:

- ``kind``: ``"tae"`` (TAESD-family state dicts) or ``"diffusers"`` (AutoencoderKL folders).
- ``decoder`` (tae): local decoder weights, ``.pth``/``.pt``/``.safetensors``; original TAESD
  layout or diffusers' AutoencoderTiny layout (a combined file also supplies the encoder).
- ``encoder`` (tae, optional): local encoder weights, for ``encode`` (tests, corpora).
- ``path``: diffusers: a local model folder (config.json + weights) or a hub id ``org/name``;
  tae: a local weights file or folder, or a hub id (then ``filename`` names the file in it).
- ``subfolder``: inside ``path`` (``"vae"`` for a whole pipeline repository or folder).
- ``filename`` (tae, with ``path``): the weights file inside the folder or hub repository.
- ``arch``: which architecture/latent convention; defaults to the id for built-ins.
  tae: taesd, taesdxl, taesd3, taef1, taef2. diffusers: sd15, sdxl, sd35, flux1, flux2.
- ``dtype``: on CUDA, ``"fp16"``, ``"bf16"`` or ``"fp32"`` (default fp16, bf16 for VAEs known
  to overflow fp16: sdxl, flux1, flux2). CPU always runs fp32.
- ``scaling_factor``, ``shift_factor``: sidecar latents are ``z / scaling_factor + shift_factor``
  before the VAE's decoder (the diffusers pipelines' convention); default from the arch (1 and
  0 for the tiny autoencoders, which take the pipeline's latents as they are).
- ``latent_channels``: checked against the loaded weights; default from the arch.
- ``random_weights``: true builds the architecture with seeded random weights (benchmarks).

A table that says where weights are (any of decoder, encoder, path, subfolder, filename)
replaces the built-in location entirely, so a local path never falls back to the hub.

Models load lazily on first `get` for a (model id, device), once even under concurrent callers,
and stay resident. A failed load is remembered for `retry_after_s` so that a missing model does
not make every request wait for another hub timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from s3latent.models.base import LatentDecoder

__all__ = [
    "BUILTIN_MODELS",
    "ModelRegistry",
    "ModelSpec",
    "ModelUnavailable",
    "UnknownModel",
]

log = logging.getLogger("s3latent.models")

Kind = Literal["tae", "diffusers"]

_TAE_ARCH_CHANNELS = {"taesd": 4, "taesdxl": 4, "taesd3": 16, "taef1": 16, "taef2": 32}
_VAE_ARCH_FACTORS = {  # latent channels, scaling_factor, shift_factor (verified vs hub configs)
    "sd15": (4, 0.18215, 0.0),
    "sdxl": (4, 0.13025, 0.0),
    "sd35": (16, 1.5305, 0.0609),
    "flux1": (16, 0.3611, 0.1159),
    "flux2": (32, 1.0, 0.0),
}
_LOCATION_KEYS = ("decoder", "encoder", "path", "subfolder", "filename")
_KNOWN_KEYS = {
    "kind",
    "arch",
    "decoder",
    "encoder",
    "path",
    "subfolder",
    "filename",
    "dtype",
    "scaling_factor",
    "shift_factor",
    "latent_channels",
    "random_weights",
}
_DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


class ModelUnavailable(Exception):
    """A known model's weights cannot be loaded; the message says why and how to configure."""


class UnknownModel(KeyError):
    """No model of that id is registered (built in or configured)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown model"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights are and how its latents are laid out."""

    model_id: str
    kind: Kind
    arch: str
    latent_channels: int
    downscale: int
    scaling_factor: float
    shift_factor: float
    decoder: str | None = None
    encoder: str | None = None
    path: str | None = None
    subfolder: str | None = None
    dtype: str | None = None
    filename: str | None = None
    random_weights: bool = False

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        """fp32 on CPU (fp16 convs there are slow and not bit-stable); else configured/default."""
        if device.type == "cpu":
            return torch.float32
        if self.dtype:
            return _DTYPES[self.dtype.lower()]
        if self.kind == "diffusers" and self.arch in ("sdxl", "flux1", "flux2"):
            return torch.bfloat16
        return torch.float16


def _tae(model_id: str, repo: str, filename: str = _DIFFUSERS_WEIGHTS) -> ModelSpec:
    return ModelSpec(
        model_id=model_id,
        kind="tae",
        arch=model_id,
        latent_channels=_TAE_ARCH_CHANNELS[model_id],
        downscale=8,
        scaling_factor=1.0,
        shift_factor=0.0,
        path=repo,
        filename=filename,
    )


def _vae(model_id: str, repo: str) -> ModelSpec:
    channels, scale, shift = _VAE_ARCH_FACTORS[model_id]
    return ModelSpec(
        model_id=model_id,
        kind="diffusers",
        arch=model_id,
        latent_channels=channels,
        downscale=8,
        scaling_factor=scale,
        shift_factor=shift,
        path=repo,
        subfolder="vae",
    )


BUILTIN_MODELS: dict[str, ModelSpec] = {
    s.model_id: s
    for s in (
        _vae("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        _vae("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
        _vae("sd35", "stabilityai/stable-diffusion-3.5-large"),
        _vae("flux1", "black-forest-labs/FLUX.1-schnell"),
        _vae("flux2", "black-forest-labs/FLUX.2-klein-4B"),
        _tae("taesd", "madebyollin/taesd"),
        _tae("taesdxl", "madebyollin/taesdxl"),
        _tae("taesd3", "madebyollin/taesd3"),
        _tae("taef1", "madebyollin/taef1"),
        _tae("taef2", "madebyollin/taef2", "taef2.safetensors"),
    )
}


def _config_error(msg: str) -> Exception:
    from s3latent.config import ConfigError

    return ConfigError(msg)


def _spec_from_table(model_id: str, table: Mapping[str, Any], base: ModelSpec | None) -> ModelSpec:
    where = f"[models.{model_id}]"
    unknown = set(table) - _KNOWN_KEYS
    if unknown:
        raise _config_error(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_KNOWN_KEYS))}"
        )
    kind = table.get("kind", base.kind if base else None)
    if kind not in ("tae", "diffusers"):
        raise _config_error(f'{where}: kind must be "tae" or "diffusers" (got {kind!r})')
    if base is not None and base.kind != kind:
        base = None  # a different family under a built-in name: start from scratch
    arch = table.get("arch", base.arch if base else model_id)
    archs = _TAE_ARCH_CHANNELS if kind == "tae" else _VAE_ARCH_FACTORS
    if arch not in archs:
        raise _config_error(
            f'{where}: arch = "{arch}" is not a known {kind} arch; set arch to one of '
            f"{', '.join(sorted(archs))}"
        )
    if kind == "tae":
        channels, scale, shift = _TAE_ARCH_CHANNELS[arch], 1.0, 0.0
    else:
        channels, scale, shift = _VAE_ARCH_FACTORS[arch]

    values: dict[str, Any] = {}
    if base is not None and not any(k in table for k in _LOCATION_KEYS):
        values.update({k: getattr(base, k) for k in _LOCATION_KEYS})
    for key in _LOCATION_KEYS:
        if key in table:
            if not isinstance(table[key], str) or not table[key]:
                raise _config_error(f"{where}: {key} must be a non-empty string")
            values[key] = (
                str(Path(table[key]).expanduser())
                if key in ("decoder", "encoder")
                else (table[key])
            )
    dtype = table.get("dtype", base.dtype if base else None)
    if dtype is not None and str(dtype).lower() not in _DTYPES:
        raise _config_error(f"{where}: dtype must be fp16, bf16 or fp32 (got {dtype!r})")
    random_weights = bool(table.get("random_weights", base.random_weights if base else False))
    try:
        spec = ModelSpec(
            model_id=model_id,
            kind=kind,
            arch=arch,
            latent_channels=int(table.get("latent_channels", channels)),
            downscale=8,
            scaling_factor=float(table.get("scaling_factor", scale)),
            shift_factor=float(table.get("shift_factor", shift)),
            dtype=dtype,
            random_weights=random_weights,
            **values,
        )
    except (TypeError, ValueError) as exc:
        raise _config_error(f"{where}: {exc}") from exc
    if spec.scaling_factor == 0:
        raise _config_error(f"{where}: scaling_factor must not be 0")
    if not random_weights:
        if kind == "tae" and not (spec.decoder or spec.path):
            raise _config_error(f"{where}: a tae model needs decoder = (weights file) or path =")
        if kind == "diffusers" and not spec.path:
            raise _config_error(f"{where}: a diffusers model needs path = (folder or hub id)")
    return spec


def how_to_configure(spec: ModelSpec) -> str:
    """The TOML that would make this model load from local weights."""
    lines = [f"[models.{spec.model_id}]", f'kind = "{spec.kind}"']
    if spec.model_id != spec.arch:
        lines.append(f'arch = "{spec.arch}"')
    if spec.kind == "tae":
        lines += [
            f'decoder = "/path/to/{spec.arch}_decoder.pth"',
            f'encoder = "/path/to/{spec.arch}_encoder.pth"   # optional',
        ]
    else:
        lines += [
            'path = "/path/to/folder"   # a diffusers VAE folder (config.json + '
            "diffusion_pytorch_model.safetensors), or a hub id where the hub is reachable",
            'subfolder = "vae"   # only if path is a whole pipeline',
        ]
    body = "\n".join("  " + line for line in lines)
    return f"To use local weights, put this in the config file (--config FILE):\n{body}"


class ModelRegistry:
    """Model id -> decoder, loaded lazily once per (id, device) and kept resident."""

    def __init__(
        self, specs: Mapping[str, ModelSpec] | None = None, retry_after_s: float = 30.0
    ) -> None:
        self._specs: dict[str, ModelSpec] = dict(BUILTIN_MODELS if specs is None else specs)
        self._retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._loaded: dict[tuple[str, str], LatentDecoder] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}

    @classmethod
    def from_config(
        cls, models: Mapping[str, Mapping[str, Any]], retry_after_s: float = 30.0
    ) -> ModelRegistry:
        """The `[models.*]` TOML tables merged over the built-ins; bad tables -> ConfigError."""
        specs = dict(BUILTIN_MODELS)
        for model_id, table in models.items():
            if not isinstance(table, Mapping):
                raise _config_error(f"[models.{model_id}] must be a table")
            specs[str(model_id)] = _spec_from_table(str(model_id), table, specs.get(model_id))
        return cls(specs, retry_after_s=retry_after_s)

    def ids(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._specs

    def spec(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise UnknownModel(
                f"unknown model {model_id!r}: not built in and no [models.{model_id}] table in "
                f"the config (known: {', '.join(self.ids())})"
            ) from None

    def is_loaded(self, model_id: str, device: torch.device | str = "cpu") -> bool:
        return (model_id, str(_normalize_device(device))) in self._loaded

    def get(self, model_id: str, device: torch.device | str = "cpu") -> LatentDecoder:
        """The loaded decoder; concurrent first callers wait for one load. Blocking: call it
        from a worker thread, never the event loop."""
        spec = self.spec(model_id)
        dev = _normalize_device(device)
        key = (model_id, str(dev))
        model = self._loaded.get(key)
        if model is not None:
            return model
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            model = self._loaded.get(key)
            if model is not None:
                return model
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < self._retry_after_s:
                raise ModelUnavailable(failed[1])
            started = time.monotonic()
            try:
                model = _load(spec, dev)
            except ModelUnavailable as exc:
                self._failed[key] = (time.monotonic(), str(exc))
                raise
            except Exception as exc:
                msg = _unavailable_message(spec, f"{type(exc).__name__}: {exc}")
                self._failed[key] = (time.monotonic(), msg)
                raise ModelUnavailable(msg) from exc
            self._failed.pop(key, None)
            self._loaded[key] = model
            log.info(
                "loaded model %s (%s/%s) on %s as %s in %.2fs",
                model_id,
                spec.kind,
                spec.arch,
                dev,
                model.dtype,
                time.monotonic() - started,
            )
            return model


def _normalize_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return dev


def _unavailable_message(spec: ModelSpec, reason: str) -> str:
    reason = reason.strip().rstrip(".")
    return f"model {spec.model_id!r} is unavailable: {reason}.\n{how_to_configure(spec)}"


def _check_channels(spec: ModelSpec, model: LatentDecoder) -> None:
    if model.latent_channels != spec.latent_channels:
        raise ModelUnavailable(
            _unavailable_message(
                spec,
                f"the weights have {model.latent_channels} latent channels, but arch "
                f"{spec.arch!r} / latent_channels says {spec.latent_channels}",
            )
        )


def _load(spec: ModelSpec, dev: torch.device) -> LatentDecoder:
    dtype = spec.torch_dtype(dev)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(_unavailable_message(spec, f"device {dev} is not available"))
    if spec.kind == "diffusers":
        model: LatentDecoder = _load_diffusers(spec, dev, dtype)
    else:
        model = _load_tae(spec, dev, dtype)
    _check_channels(spec, model)
    return model


def _load_diffusers(spec: ModelSpec, dev: torch.device, dtype: torch.dtype) -> LatentDecoder:
    from s3latent.models.autoencoder_kl import WeightsNotFound, load_autoencoder_kl

    try:
        return load_autoencoder_kl(
            spec.arch,
            spec.path,
            subfolder=spec.subfolder,
            device=dev,
            dtype=dtype,
            model_id=spec.model_id,
            scaling_factor=spec.scaling_factor,
            shift_factor=spec.shift_factor,
            random_weights=spec.random_weights,
        )
    except WeightsNotFound as exc:
        raise ModelUnavailable(_unavailable_message(spec, str(exc))) from exc


def _resolve_tae_file(spec: ModelSpec) -> Path:
    """The decoder weights file for a tae spec: local file, file in a folder, or hub download."""
    if spec.decoder:
        path = Path(spec.decoder)
        if not path.is_file():
            raise ModelUnavailable(_unavailable_message(spec, f"no such weights file: {path}"))
        return path
    assert spec.path is not None
    local = Path(spec.path).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        folder = local / spec.subfolder if spec.subfolder else local
        names = (
            [spec.filename]
            if spec.filename
            else [
                f"{spec.arch}_decoder.pth",
                f"{spec.arch}.safetensors",
                _DIFFUSERS_WEIGHTS,
            ]
        )
        for name in names:
            if (folder / name).is_file():
                return folder / name
        raise ModelUnavailable(
            _unavailable_message(spec, f"{folder} holds none of {', '.join(names)}")
        )
    if spec.path.startswith(("/", ".", "~")) or spec.path.count("/") != 1:
        raise ModelUnavailable(
            _unavailable_message(spec, f"no such file or folder: {spec.path} (nor a hub id)")
        )
    from huggingface_hub import hf_hub_download

    from s3latent.models.autoencoder_kl import hub_offline

    offline = hub_offline()
    try:
        return Path(
            hf_hub_download(
                repo_id=spec.path,
                filename=spec.filename or _DIFFUSERS_WEIGHTS,
                subfolder=spec.subfolder,
                local_files_only=offline,
            )
        )
    except Exception as exc:
        mode = (
            "the hub is offline (HF_HUB_OFFLINE) and it is not cached"
            if offline
            else ("download failed")
        )
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelUnavailable(
            _unavailable_message(spec, f"{spec.path}: {mode}: {first[:300]}")
        ) from exc


def _load_tae(spec: ModelSpec, dev: torch.device, dtype: torch.dtype) -> LatentDecoder:
    from s3latent.models.tae import TAE_ARCHS, build_random_tae, load_tae

    arch = TAE_ARCHS[spec.arch]
    if spec.random_weights:
        return build_random_tae(
            arch, dev, dtype, spec.model_id, spec.scaling_factor, spec.shift_factor
        )
    decoder_file = _resolve_tae_file(spec)
    encoder_file = spec.encoder
    if encoder_file and not Path(encoder_file).is_file():
        raise ModelUnavailable(_unavailable_message(spec, f"no such weights file: {encoder_file}"))
    try:
        return load_tae(
            arch,
            decoder_file,
            encoder_file,
            dev,
            dtype,
            model_id=spec.model_id,
            scaling_factor=spec.scaling_factor,
            shift_factor=spec.shift_factor,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelUnavailable(_unavailable_message(spec, str(exc))) from exc


def replace_spec(spec: ModelSpec, **changes: Any) -> ModelSpec:
    """A copy of `spec` with some fields changed (tests, tools)."""
    return dataclasses.replace(spec, **changes)
