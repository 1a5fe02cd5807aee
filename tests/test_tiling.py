"""Bounded decode memory: tiled decodes, the memory budget, the tiling recorded per object."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from s3latent.backends.base import ObjectMeta
from s3latent.config import BucketSettings, Config, ConfigError, DecodeSettings, load_config
from s3latent.decode.pipeline import DevicePipeline, MemoryBudget, pixels_to_uint8
from s3latent.decode.renderer import header_tiling
from s3latent.decode.services import DecodeServices
from s3latent.latent.container import pack, unpack
from s3latent.latent.fidelity import decode_image_bytes, psnr
from s3latent.latent.sidecar import parse_sidecar
from s3latent.models.autoencoder_kl import load_autoencoder_kl
from s3latent.models.tae import TAE_ARCHS, TAEArch, build_random_tae, build_tae_decoder
from s3latent.models.tiling import Tiling, estimate_decode_bytes, plan_tiling, tile_grid
from s3latent.objects.admission import Admitter

TINY_VAE = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float().clamp(0, 1) - b.float().clamp(0, 1)) ** 2).item()
    return 10 * float(np.log10(1.0 / max(mse, 1e-20)))


def _z(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- tiled decodes -------------------------------------------------------------------------------


def test_tile_grid_covers_evenly() -> None:
    assert tile_grid(100, 128) == [(0, 100)]
    assert tile_grid(300, 128) == [(0, 100), (100, 200), (200, 300)]
    assert tile_grid(257, 128) == [(0, 85), (85, 171), (171, 257)]


def test_tiled_tae_is_deterministic_batch_independent_and_close_to_untiled() -> None:
    # TAEF2's layout with its whole-image GroupNorm branch, narrower (fast on 2 cores)
    model = build_random_tae(TAEArch(latent_channels=32, midblock_norm=True, width=16), seed=3)
    z = _z(2, 32, 40, 36)
    tiling = Tiling(16, 6)
    first = model.decode_tiled(z, tiling)
    assert first.shape == (2, 3, 320, 288)
    assert first.numpy().tobytes() == model.decode_tiled(z, tiling).numpy().tobytes()
    alone = model.decode_tiled(z[1:2], tiling)
    assert alone.numpy().tobytes() == first[1:2].numpy().tobytes()
    untiled = model.decode(z)
    assert _psnr(first, untiled) > 100  # the tail sees a few latent pixels: nearly exact
    # and it really is tiled: without overlap the seams show
    assert _psnr(model.decode_tiled(z, Tiling(16, 0)), untiled) < 80


def test_tiled_vae_is_deterministic_and_close_to_untiled() -> None:
    vae = load_autoencoder_kl("flux1", random_weights=True, config_overrides=TINY_VAE)
    z = _z(2, 16, 24, 20, seed=2)
    tiling = Tiling(8, 4)
    first = vae.decode_tiled(z, tiling)
    assert first.shape == vae.decode(z).shape
    assert first.numpy().tobytes() == vae.decode_tiled(z, tiling).numpy().tobytes()
    assert vae.decode_tiled(z[:1], tiling).numpy().tobytes() == first[:1].numpy().tobytes()
    assert _psnr(first, vae.decode(z)) > 30  # attention and GroupNorm see one tile


def test_plan_tiling_is_a_function_of_shape_and_settings() -> None:
    kw: dict[str, Any] = {"tile": 128, "overlap": 8, "budget": 4 << 30}
    assert plan_tiling(128, 128, 8, 1024, **kw) is None  # 1024²: one tile, fits
    assert plan_tiling(256, 256, 8, 1024, **kw) == Tiling(128, 8)
    assert plan_tiling(512, 512, 8, 1024, **kw) == plan_tiling(512, 512, 8, 1024, **kw)
    # a budget too small for the untiled decode tiles it, with tiles that fit the budget
    small = plan_tiling(128, 128, 8, 1024, tile=128, overlap=8, budget=600 << 20)
    assert small is not None and small.tile < 128
    assert estimate_decode_bytes(128, 128, 8, 1024, small) <= 600 << 20
    assert plan_tiling(512, 512, 8, 1024, tile=0, overlap=8, budget=1) is None  # tiling off


def test_estimates_bound_a_4096_decode() -> None:
    untiled = estimate_decode_bytes(512, 512, 8, 1024, None)
    tiled = estimate_decode_bytes(512, 512, 8, 1024, Tiling(128, 8))
    assert untiled > 12 << 30  # what the issue measured (12.8 GB RSS)
    assert tiled < 3 << 30


# --- the memory budget ---------------------------------------------------------------------------


async def test_budget_makes_a_second_large_acquire_wait() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(70)
    second = asyncio.ensure_future(budget.acquire(70))
    small = asyncio.ensure_future(budget.acquire(10))  # first come, first served
    await asyncio.sleep(0.05)
    assert not second.done() and not small.done() and budget.waiting == 2
    budget.release(70)
    await asyncio.wait_for(second, 1)
    await asyncio.wait_for(small, 1)
    assert budget.used == 80
    budget.release(70)
    budget.release(10)
    await asyncio.wait_for(budget.acquire(500), 1)  # larger than all of it: runs alone
    assert budget.would_wait(1)
    budget.release(500)
    assert budget.used == 0 and not budget.would_wait(100)


async def test_cancelled_waiter_gives_its_turn_away() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(90)
    waiter = asyncio.ensure_future(budget.acquire(50))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.sleep(0.01)
    await asyncio.wait_for(budget.acquire(10), 1)
    assert budget.used == 100 and budget.waiting == 0


class _Recorder(torch.nn.Module):
    """A decoder that records when each decode runs (on its pipeline's thread)."""

    latent_channels = 4
    downscale = 4
    device = torch.device("cpu")
    dtype = torch.float32
    act_bytes_per_px = 1000
    batch_invariant = False

    def __init__(self, log: list[tuple[str, float, float, int]], name: str) -> None:
        super().__init__()
        self.log, self.name = log, name

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        time.sleep(0.2)
        out = torch.nn.functional.interpolate(latents[:, :3].sigmoid(), scale_factor=4)
        self.log.append((self.name, start, time.perf_counter(), latents.shape[0]))
        return out


async def test_two_devices_sharing_a_budget_do_not_decode_large_latents_at_once() -> None:
    log: list[tuple[str, float, float, int]] = []
    one = estimate_decode_bytes(32, 32, 4, 1000, None)
    budget = MemoryBudget(int(one * 1.5))  # room for one large decode at a time
    pipes = [DevicePipeline(torch.device("cpu"), lambda m, d, n=n: _Recorder(log, n),
                            max_batch=4, max_wait_ms=0, budget=budget) for n in ("a", "b")]
    try:
        z = _z(4, 32, 32)
        await asyncio.gather(pipes[0].decode("m", z), pipes[1].decode("m", z))
        (_, _, e1, _), (_, s2, _, _) = sorted(log, key=lambda r: r[1])
        assert s2 >= e1, "the second large decode started before the first finished"
        assert sum(p.stats.budget_waits for p in pipes) == 1
        assert budget.used == 0
    finally:
        for p in pipes:
            await p.close()


async def test_batches_are_cut_to_fit_the_budget() -> None:
    log: list[tuple[str, float, float, int]] = []
    one = estimate_decode_bytes(16, 16, 4, 1000, None)
    pipe = DevicePipeline(torch.device("cpu"), lambda m, d: _Recorder(log, "a"), max_batch=8,
                          max_wait_ms=50, budget=MemoryBudget(2 * one))
    try:
        out = await asyncio.gather(*(pipe.decode("m", _z(4, 16, 16, seed=i)) for i in range(5)))
        assert all(o.shape == (64, 64, 3) for o in out)
        assert max(r[3] for r in log) == 2 and pipe.stats.decoded == 5
    finally:
        await pipe.close()


async def test_pipeline_tiled_jobs_match_direct_tiled_decode() -> None:
    model = build_random_tae(TAEArch(latent_channels=4, width=16), seed=4)
    pipe = DevicePipeline(torch.device("cpu"), lambda m, d: model, max_batch=4, max_wait_ms=30)
    tiling = Tiling(16, 4)
    try:
        zs = [_z(4, 24, 40, seed=i) for i in range(3)]
        batched = await asyncio.gather(*(pipe.decode("t", z, tiling) for z in zs))
        alone = [await pipe.decode("t", z, tiling) for z in zs]
        untiled = await pipe.decode("t", zs[0])
        for z, a, b in zip(zs, batched, alone, strict=True):
            direct = pixels_to_uint8(model.decode_tiled(z[None], tiling))[0].numpy()
            assert a.tobytes() == b.tobytes() == direct.tobytes()
        assert untiled.tobytes() == pixels_to_uint8(model.decode(zs[0][None]))[0].numpy().tobytes()
    finally:
        await pipe.close()


# --- what is recorded per object -----------------------------------------------------------------


def _tiny_config(tmp_path: Path, **decode: Any) -> Config:
    torch.manual_seed(7)
    path = tmp_path / "dec.pth"
    torch.save(build_tae_decoder(TAE_ARCHS["taesd"]).state_dict(), path)
    cfg = Config(models={"tiny": {"kind": "tae", "arch": "taesd", "decoder": str(path)}})
    cfg.decode = DecodeSettings(device="cpu", **decode)
    return cfg


def _sidecar(h: int, w: int, seed: int = 0) -> Any:
    from safetensors.torch import save

    latent = torch.randn(4, h, w, generator=torch.Generator().manual_seed(seed)).half()
    return parse_sidecar(save({"latent": latent}, metadata={"model": "tiny"}))


async def test_admission_records_tiling_and_reads_render_the_same_bytes(tmp_path: Path) -> None:
    decoding = DecodeServices(_tiny_config(tmp_path, tile_size=16))
    try:
        await decoding.ready()
        admission = await Admitter(decoding).admit_latent_only(
            BucketSettings(codec="q8"), _sidecar(24, 40), "tiny", "PNG", "image/png",
            ObjectMeta())
        header, _ = unpack(admission.container)
        assert header_tiling(header) == Tiling(16, 8) and "tiling" in header.extra
        small = await Admitter(decoding).admit_latent_only(
            BucketSettings(codec="q8"), _sidecar(16, 16), "tiny", "PNG", "image/png",
            ObjectMeta())
        assert header_tiling(small.header) is None
        assert small.header.extra == {"cpu_threads": decoding.cpu_threads}
        assert small.header.render_profile != header.render_profile
        renderer = decoding.renderer
        for _ in range(2):
            data, _ = await renderer.rendition("b", "k", "e1", admission.container)
            assert data == admission.rendition  # the ETag fixed at conversion holds
    finally:
        await decoding.close()


async def test_container_without_tiling_renders_untiled_as_before(tmp_path: Path) -> None:
    decoding = DecodeServices(_tiny_config(tmp_path, tile_size=0))  # conversions as before tiling
    try:
        await decoding.ready()
        admission = await Admitter(decoding).admit_latent_only(
            BucketSettings(codec="lossless"), _sidecar(24, 40, seed=3), "tiny", "PNG",
            "image/png", ObjectMeta())
        assert admission.header.extra == {"cpu_threads": decoding.cpu_threads}
        assert decoding.cpu_threads is not None and decoding.cpu_threads >= 1
        # Today's settings would tile a latent this size; the stored container says nothing,
        # so it still renders untiled, byte for byte.
        decoding._config.decode.tile_size = 16
        assert decoding.plan_tiling("tiny", [4, 24, 40]) is not None
        data, _ = await decoding.renderer.rendition("b", "k", "e2", admission.container)
        assert data == admission.rendition
        # the same latent with a tiling record renders differently (the record is obeyed)
        header, payload = unpack(admission.container)
        header.extra = {**header.extra, "tiling": {"tile": 16, "overlap": 0}}
        tiled, _ = await decoding.renderer.rendition("b", "k", "e3", pack(header, payload))
        assert tiled != data
        a, b = decode_image_bytes(tiled)[0], decode_image_bytes(data)[0]
        assert 20 < psnr(a, b) < 99
    finally:
        await decoding.close()


async def test_pixel_ceiling_refuses_a_pair_before_decoding(tmp_path: Path) -> None:
    from s3latent.objects.conversion import reason_category

    decoding = DecodeServices(_tiny_config(tmp_path, max_image_pixels=128 * 128))
    try:
        await decoding.ready()
        assert decoding.over_pixel_ceiling("tiny", [4, 16, 16]) is None
        why = decoding.over_pixel_ceiling("tiny", [4, 16, 24])
        assert why is not None and "192x128" in why and "max_image_pixels" in why
        assert reason_category(why) == "too large to convert"
        with pytest.raises(ValueError, match="max_image_pixels"):
            await Admitter(decoding).admit_latent_only(
                BucketSettings(), _sidecar(16, 24), "tiny", "PNG", "image/png", ObjectMeta())
        assert decoding.renderer.pipeline.devices[0].stats.decoded == 0
    finally:
        await decoding.close()


def test_decode_settings_parse_and_validate(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[decode]\nmemory_budget = "2GiB"\ntile_size = 64\nmax_image_pixels = 1000\n')
    cfg = load_config(path, env={})
    assert cfg.decode.memory_budget == 2 << 30 and cfg.decode.tile_size == 64
    assert cfg.decode.max_image_pixels == 1000 and cfg.decode.tile_overlap == -1
    for bad in ("tile_size = 8", "tile_overlap = 80", "max_image_pixels = 0",
                'memory_budget = "0"'):
        path.write_text(f"[decode]\n{bad}\n")
        with pytest.raises(ConfigError):
            load_config(path, env={})


async def test_a_rendition_keeps_its_bytes_when_the_nodes_thread_count_changes(
        tmp_path: Path) -> None:
    """Converted with one cpu_threads, read by a node (or restart) with another: the
    container's recorded count is used, so the bytes are the ones its ETag was made from."""
    before = torch.get_num_threads()
    first = DecodeServices(_tiny_config(tmp_path, tile_size=0))
    first._config.decode.cpu_threads = 1
    try:
        await first.ready()
        admission = await Admitter(first).admit_latent_only(
            BucketSettings(codec="lossless"), _sidecar(24, 40, seed=5), "tiny", "PNG",
            "image/png", ObjectMeta())
    finally:
        await first.close()
    assert admission.header.extra["cpu_threads"] == 1
    second = DecodeServices(_tiny_config(tmp_path, tile_size=0))
    second._config.decode.cpu_threads = 2
    try:
        await second.ready()
        assert second.cpu_threads == 2
        device = second.renderer.pipeline.devices[0]
        seen: list[int] = []
        real = device._run_decode

        def counting(*args: Any) -> Any:
            seen.append(torch.get_num_threads())
            return real(*args)

        device._run_decode = counting  # type: ignore[method-assign]
        data, _ = await second.renderer.rendition("b", "k", "e", admission.container)
        assert data == admission.rendition
        assert seen and set(seen) == {1}
    finally:
        await second.close()
        torch.set_num_threads(before)
