"""Model registry and decoders: real TAEF2, tiny TAEs and VAEs through the same loading code."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from s3latent.config import ConfigError
from s3latent.models import registry as registry_mod
from s3latent.models.autoencoder_kl import load_autoencoder_kl
from s3latent.models.registry import ModelRegistry, ModelUnavailable, UnknownModel
from s3latent.models.tae import (
    TAE_ARCHS,
    build_tae_decoder,
    build_tae_encoder,
    load_tae,
)

TAEF2_DIR = Path(__file__).resolve().parents[2] / "shared" / "models" / "taef2"
needs_taef2 = pytest.mark.skipif(
    not (TAEF2_DIR / "taef2_decoder.pth").is_file(), reason="TAEF2 weights absent"
)

TINY_VAE = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).item()
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def _natural_image(size: int) -> torch.Tensor:
    from s3latent.bench.corpus import _center_square, _to_tensor, source_images

    _, _, img = next(iter(source_images()))
    return _to_tensor(_center_square(img, size))


def _tiny_tae_files(tmp_path: Path, arch: str = "taesd", seed: int = 1) -> tuple[Path, Path]:
    torch.manual_seed(seed)
    dec, enc = build_tae_decoder(TAE_ARCHS[arch]), build_tae_encoder(TAE_ARCHS[arch])
    dpath, epath = tmp_path / f"{arch}_decoder.pth", tmp_path / f"{arch}_encoder.pth"
    torch.save(dec.state_dict(), dpath)
    torch.save(enc.state_dict(), epath)
    return dpath, epath


# --- real TAEF2 --------------------------------------------------------------------------------


@needs_taef2
def test_taef2_loads_strict_and_round_trips_a_natural_image() -> None:
    reg = ModelRegistry.from_config(
        {
            "taef2": {
                "kind": "tae",
                "decoder": str(TAEF2_DIR / "taef2_decoder.pth"),
                "encoder": str(TAEF2_DIR / "taef2_encoder.pth"),
            }
        }
    )
    model = reg.get("taef2")
    assert (model.latent_channels, model.downscale, model.dtype) == (32, 8, torch.float32)
    # every key of the published state dicts is used, and nothing else is expected
    for part, module in (("decoder", model.decoder), ("encoder", model.encoder)):
        sd = torch.load(TAEF2_DIR / f"taef2_{part}.pth", weights_only=True)
        assert set(sd) == set(module.state_dict())
    image = _natural_image(256)
    latent = model.encode(image)
    assert latent.shape == (1, 32, 32, 32)
    generated = model.decode(latent)
    assert generated.shape == image.shape
    assert _psnr(generated, image) > 26.0
    # a generated image survives another trip nearly unchanged (it is on the decoder's manifold)
    again = model.decode(model.encode(generated.clamp(0, 1)))
    assert _psnr(again, generated) > 29.0


@needs_taef2
def test_taef2_without_pool_branch_does_not_load() -> None:
    from s3latent.models.tae import TAEArch

    with pytest.raises(ValueError, match="do not fit"):
        load_tae(TAEArch(latent_channels=32), TAEF2_DIR / "taef2_decoder.pth")


# --- tiny TAEs through the registry ----------------------------------------------------------


def test_tiny_tae_state_dict_loads_through_registry(tmp_path: Path) -> None:
    dpath, epath = _tiny_tae_files(tmp_path)
    reg = ModelRegistry.from_config(
        {"mytae": {"kind": "tae", "arch": "taesd", "decoder": str(dpath), "encoder": str(epath)}}
    )
    assert not reg.is_loaded("mytae")
    model = reg.get("mytae")
    assert reg.is_loaded("mytae")
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = build_tae_decoder(TAE_ARCHS["taesd"])
    expected.load_state_dict(torch.load(dpath, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z[:1]), expected(z[:1]))
    assert model.decode(z).shape == (2, 3, 64, 64)
    assert model.encode(torch.rand(1, 3, 64, 64)).shape == (1, 4, 8, 8)


def test_diffusers_layout_combined_file_loads_both_halves(tmp_path: Path) -> None:
    dpath, epath = _tiny_tae_files(tmp_path, "taef2")
    dec = torch.load(dpath, weights_only=True)
    enc = torch.load(epath, weights_only=True)
    combined = {}
    for k, v in dec.items():  # diffusers' decoder has no clamp layer: indices one lower
        i, rest = k.split(".", 1)
        combined[f"decoder.layers.{int(i) - 1}.{rest}"] = v
    for k, v in enc.items():
        combined[f"encoder.layers.{k}"] = v
    save_file(combined, str(tmp_path / "taef2.safetensors"))
    reg = ModelRegistry.from_config(
        {"taef2": {"path": str(tmp_path), "filename": "taef2.safetensors"}}
    )
    model = reg.get("taef2")
    direct = load_tae("taef2", dpath, epath)
    z = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(3))
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    assert torch.equal(model.decode(z), direct.decode(z))
    assert torch.equal(model.encode(img), direct.encode(img))


def test_mismatched_weights_are_unavailable_with_reason(tmp_path: Path) -> None:
    dpath, _ = _tiny_tae_files(tmp_path, "taesd")
    reg = ModelRegistry.from_config({"taef1": {"decoder": str(dpath)}})  # 4-ch weights, 16-ch arch
    with pytest.raises(ModelUnavailable) as err:
        reg.get("taef1")
    assert "do not fit" in str(err.value)
    assert "[models.taef1]" in str(err.value)
    missing = ModelRegistry.from_config({"taesd": {"decoder": str(tmp_path / "nope.pth")}})
    with pytest.raises(ModelUnavailable, match="no such weights file"):
        missing.get("taesd")


# --- diffusers AutoencoderKL -----------------------------------------------------------------


@pytest.mark.parametrize("subfolder", [None, "vae"])
def test_autoencoder_kl_local_folder_through_registry(
    tmp_path: Path, subfolder: str | None
) -> None:
    src = load_autoencoder_kl("sd35", random_weights=True, config_overrides=TINY_VAE)
    target = tmp_path / subfolder if subfolder else tmp_path
    src.vae.save_pretrained(str(target))
    table = {"kind": "diffusers", "arch": "sd35", "path": str(tmp_path)}
    if subfolder:
        table["subfolder"] = subfolder
    reg = ModelRegistry.from_config({"tiny35": table})
    model = reg.get("tiny35")
    assert (model.latent_channels, model.scaling_factor, model.shift_factor) == (16, 1.5305, 0.0609)
    z = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = src.vae.decode(z / 1.5305 + 0.0609).sample
    out = model.decode(z)
    assert out.shape == (1, 3, 16, 16)
    torch.testing.assert_close(out, raw * 0.5 + 0.5)
    # encode inverts the scaling: the posterior mode in denoiser space
    latents = model.encode(out.clamp(0, 1))
    assert latents.shape == (1, 16, 8, 8)


def test_flux2_vae_class_and_random_weights() -> None:
    reg = ModelRegistry.from_config(
        {"f2": {"kind": "diffusers", "arch": "flux2", "random_weights": True}}
    )
    spec = reg.spec("f2")
    assert (spec.latent_channels, spec.scaling_factor, spec.shift_factor) == (32, 1.0, 0.0)
    model = load_autoencoder_kl("flux2", random_weights=True, config_overrides=TINY_VAE)
    assert type(model.vae).__name__ == "AutoencoderKLFlux2"
    assert model.decode(torch.zeros(1, 32, 4, 4)).shape == (1, 3, 8, 8)


def test_hub_id_offline_fails_with_config_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reg = ModelRegistry()
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        reg.get("sd35")
    msg = str(err.value)
    assert "offline" in msg
    assert "[models.sd35]" in msg and 'kind = "diffusers"' in msg and "path = " in msg
    assert "--config" in msg
    with pytest.raises(ModelUnavailable) as err:
        reg.get("taef2")
    assert "[models.taef2]" in str(err.value) and "decoder = " in str(err.value)
    assert time.monotonic() - started < 20


def test_failed_load_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    real = registry_mod._load

    def counting(spec, dev):  # type: ignore[no-untyped-def]
        calls.append(spec.model_id)
        return real(spec, dev)

    monkeypatch.setattr(registry_mod, "_load", counting)
    reg = ModelRegistry(retry_after_s=60)
    for _ in range(3):
        with pytest.raises(ModelUnavailable):
            reg.get("taesd")
    assert calls == ["taesd"]


# --- registry behaviour ------------------------------------------------------------------------


def test_unknown_model_and_bad_tables() -> None:
    reg = ModelRegistry()
    assert set(reg.ids()) >= {"sd15", "sdxl", "sd35", "flux1", "flux2", "taesd", "taef2"}
    with pytest.raises(UnknownModel, match="unknown model 'nope'"):
        reg.get("nope")
    with pytest.raises(KeyError):
        reg.spec("nope")
    with pytest.raises(ConfigError, match="kind"):
        ModelRegistry.from_config({"x": {"kind": "onnx", "path": "a/b"}})
    with pytest.raises(ConfigError, match="arch"):
        ModelRegistry.from_config({"x": {"kind": "tae", "decoder": "/tmp/x.pth"}})
    with pytest.raises(ConfigError, match="unknown key"):
        ModelRegistry.from_config({"taef2": {"decodr": "/tmp/x.pth"}})
    with pytest.raises(ConfigError, match="dtype"):
        ModelRegistry.from_config({"taef2": {"dtype": "int8"}})


def test_local_location_replaces_builtin_hub_location() -> None:
    reg = ModelRegistry.from_config({"taef2": {"kind": "tae", "decoder": "/w/taef2_decoder.pth"}})
    spec = reg.spec("taef2")
    assert (spec.decoder, spec.path, spec.filename) == ("/w/taef2_decoder.pth", None, None)
    assert ModelRegistry().spec("taef2").path == "madebyollin/taef2"
    sd = reg.spec("sdxl")
    assert (sd.kind, sd.scaling_factor, sd.subfolder) == ("diffusers", 0.13025, "vae")
    assert sd.torch_dtype(torch.device("cuda")) == torch.bfloat16
    assert reg.spec("sd15").torch_dtype(torch.device("cuda")) == torch.float16
    assert sd.torch_dtype(torch.device("cpu")) == torch.float32


def test_concurrent_first_gets_share_one_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dpath, _ = _tiny_tae_files(tmp_path)
    calls = []
    real = registry_mod._load

    def slow(spec, dev):  # type: ignore[no-untyped-def]
        calls.append(spec.model_id)
        time.sleep(0.3)
        return real(spec, dev)

    monkeypatch.setattr(registry_mod, "_load", slow)
    reg = ModelRegistry.from_config({"t": {"kind": "tae", "arch": "taesd", "decoder": str(dpath)}})
    results: list[object] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(reg.get("t", "cpu"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert calls == ["t"]
    assert reg.get("t", torch.device("cpu")) is results[0]


def test_cpu_decode_is_deterministic_and_batch_independent(tmp_path: Path) -> None:
    dpath, _ = _tiny_tae_files(tmp_path, "taef2")
    reg = ModelRegistry.from_config({"t": {"kind": "tae", "arch": "taef2", "decoder": str(dpath)}})
    model = reg.get("t")
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, 32, 16, 16, generator=g)
    first = model.decode(z).numpy().tobytes()
    assert model.decode(z).numpy().tobytes() == first
    alone = model.decode(z[1:2])
    assert torch.equal(alone[0], model.decode(z)[1])
    vae = load_autoencoder_kl("flux1", random_weights=True, config_overrides=TINY_VAE)
    zz = torch.randn(3, 16, 8, 8, generator=g)
    batch = vae.decode(zz)
    assert batch.numpy().tobytes() == vae.decode(zz).numpy().tobytes()
    assert torch.equal(vae.decode(zz[2:3])[0], batch[2])
