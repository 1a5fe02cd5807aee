"""Stage 3 encoder choice: fpng for new PNG renditions, never a silent substitute on read.

A converted object's ETag and length were fixed at conversion, so the encoder is
part of the stored settings: objects from before the field existed (no
`encoder` key) must still re-render with Pillow byte for byte, and an object
whose settings name an encoder that is not installed must fail (500 and a log
line), not render with another one.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import PIL
import pytest
import torch
from botocore.exceptions import ClientError
from PIL import Image

from s3latent.config import ConfigError, load_config
from s3latent.decode.renderer import Renderer, settings_dict
from s3latent.latent import codec as codecs
from s3latent.latent.container import ContainerHeader, pack, unpack
from s3latent.latent.fidelity import decode_image_bytes, psnr
from s3latent.latent.rendition import (
    FPNG,
    PILLOW,
    PNG_ENCODER_ENV,
    EncoderUnavailable,
    RenderSettings,
    encode,
    encode_rendition_sized,
    encoder_installed,
    render_profile,
    settings_for_format,
    settings_for_upload,
)
from tests.gateway import GatewayProcess
from tests.test_latent_objects import _config, make_pair, tiny_model, wait_latent

__all__ = ["tiny_model"]  # the module-scoped fixture, shared with test_latent_objects

HAVE_FPNG = encoder_installed(FPNG)
needs_fpng = pytest.mark.skipif(not HAVE_FPNG, reason="fpng not installed")
FPNG_SETTINGS = RenderSettings("PNG", encoder=FPNG)
# fpng 0.1.x's output for _pixels(0): a build that changes bytes must be noticed, since every
# stored fpng rendition's ETag depends on it.
FPNG_GOLDEN_SHA256 = "79763274579ea10ab22bc4154b23eb7bbc066bbeb9700b9cc0159e2ec7615d2b"
# What conversions stored before the encoder field existed (PNG, default settings).
OLD_STORED = {"format": "PNG", "png_level": 6, "jpeg_quality": 90, "jpeg_subsampling": 2,
              "jpeg_optimize": False, "jpeg_progressive": False, "webp_quality": 90,
              "webp_lossless": False, "webp_method": 4}


def _pixels(seed: int = 0, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float64)
    img = np.stack([np.add.outer(base, base) / 2, np.add.outer(base, -base) / 2 + 128,
                    np.full((size, size), 90.0)], axis=-1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray, **kw: Any) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", **kw)
    return out.getvalue()


@pytest.fixture
def no_fpng(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the fpng package were not installed (`import fpng` raises ImportError)."""
    monkeypatch.setitem(sys.modules, "fpng", None)


# -- stored settings ------------------------------------------------------------------------

def test_settings_stored_before_the_field_still_mean_pillow() -> None:
    old = RenderSettings(**OLD_STORED)
    assert old.encoder == PILLOW and old == RenderSettings("PNG")
    assert settings_dict(old) == OLD_STORED  # new Pillow headers: what old gateways wrote
    assert encode(_pixels(), old) == _png(_pixels(), compress_level=6)
    for s in (RenderSettings("JPEG", jpeg_quality=87, jpeg_optimize=True),
              RenderSettings("WEBP", webp_lossless=True, webp_method=6)):
        stored = settings_dict(s)
        assert "encoder" not in stored and RenderSettings(**stored) == s


@pytest.mark.parametrize("settings", [RenderSettings("PNG"), FPNG_SETTINGS,
                                      RenderSettings("JPEG", jpeg_optimize=True)])
def test_settings_round_trip_through_the_container(settings: RenderSettings) -> None:
    latent = torch.randn(4, 8, 8)
    payload, params = codecs.get_codec("lossless").encode(latent)
    header = ContainerHeader(model="tiny", shape=[4, 8, 8], dtype="float32", codec="lossless",
                             codec_params=params, size=1, etag="0" * 32,
                             content_type="image/png", last_modified="2026-01-01T00:00:00+00:00",
                             image_format=settings.format.lower(),
                             encoder=settings_dict(settings))
    restored, _ = unpack(pack(header, payload))
    assert RenderSettings(**restored.encoder) == settings
    assert ("encoder" in restored.encoder) == (settings.encoder != PILLOW)


def test_render_profile_of_pillow_settings_is_unchanged() -> None:
    import torch as t

    old_repr = ("RenderSettings(format='PNG', png_level=6, jpeg_quality=90, jpeg_subsampling=2, "
                "jpeg_optimize=False, jpeg_progressive=False, webp_quality=90, "
                "webp_lossless=False, webp_method=4)")
    parts = ["tiny", "float32", "cpu", f"torch-{t.__version__}", f"pillow-{PIL.__version__}",
             old_repr]
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    assert render_profile(RenderSettings("PNG"), "tiny", "float32", "cpu") == (
        f"tiny/float32/cpu/{digest}")
    assert render_profile(FPNG_SETTINGS, "tiny", "float32", "cpu") != (
        f"tiny/float32/cpu/{digest}")


# -- fpng -----------------------------------------------------------------------------------

@needs_fpng
def test_fpng_is_lossless_deterministic_and_pinned() -> None:
    pixels = _pixels()
    data = encode(pixels, FPNG_SETTINGS)
    assert encode(pixels, FPNG_SETTINGS) == data
    assert hashlib.sha256(data).hexdigest() == FPNG_GOLDEN_SHA256
    decoded, info = decode_image_bytes(data)
    assert info.format == "PNG" and np.array_equal(decoded, pixels)
    assert b"fdEC" in data  # fpng's marker chunk: it really was fpng
    assert data != encode(pixels, RenderSettings("PNG"))


@needs_fpng
def test_fpng_same_bytes_in_a_fresh_process(tmp_path: Path) -> None:
    pixels = _pixels(5, 96)
    np.save(tmp_path / "px.npy", pixels)
    code = ("import hashlib,sys,numpy as np;from s3latent.latent.rendition import "
            "RenderSettings,encode;print(hashlib.sha256(encode(np.load(sys.argv[1]),"
            "RenderSettings('PNG',encoder='fpng'))).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "px.npy")],
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == hashlib.sha256(encode(pixels, FPNG_SETTINGS)).hexdigest()


@needs_fpng
def test_fpng_rendition_hits_exact_sizes() -> None:
    pixels = _pixels(1)
    plain = encode(pixels, FPNG_SETTINGS)
    for extra in (0, 12, 13, 100, 70_000, 140_000):
        target = len(plain) + extra
        data, used = encode_rendition_sized(pixels, FPNG_SETTINGS, target)
        assert len(data) == target and used == FPNG_SETTINGS, extra
        assert np.array_equal(decode_image_bytes(data)[0], pixels)
        Image.open(io.BytesIO(data)).verify()
        assert encode_rendition_sized(pixels, used, target) == (data, used)  # one encode
        assert settings_dict(used)["encoder"] == FPNG


@needs_fpng
def test_fpng_too_large_ends_exactly_where_pillow_would() -> None:
    pixels = _pixels(2)
    pillow_size = len(encode(pixels, RenderSettings("PNG")))
    assert pillow_size + 50 < len(encode(pixels, FPNG_SETTINGS))  # fpng compresses less
    for target in (pillow_size + 50, pillow_size + 3, pillow_size - 10, 100):
        data, used = encode_rendition_sized(pixels, FPNG_SETTINGS, target)
        assert used.encoder == PILLOW
        assert (data, used) == encode_rendition_sized(pixels, RenderSettings("PNG"), target)
        if len(data) == target:  # reads re-render it from the stored settings alone
            assert encode_rendition_sized(pixels, RenderSettings(**settings_dict(used)),
                                          target) == (data, used)
    assert np.array_equal(decode_image_bytes(data)[0], pixels)


# -- choosing the encoder for new conversions -------------------------------------------------

def test_new_png_conversions_prefer_fpng_when_installed() -> None:
    png = _png(_pixels())
    expected = FPNG if HAVE_FPNG else PILLOW
    assert settings_for_upload(png).encoder == expected
    assert settings_for_format("PNG").encoder == expected
    jpeg = io.BytesIO()
    Image.fromarray(_pixels()).save(jpeg, "JPEG", quality=90)
    assert settings_for_upload(jpeg.getvalue()).encoder == PILLOW
    assert settings_for_format("WEBP").encoder == PILLOW
    assert settings_for_upload(png, "pillow").encoder == PILLOW
    with pytest.raises(ValueError, match="png_encoder"):
        settings_for_upload(png, "zopfli")


def test_png_encoder_is_configured_in_one_place(tmp_path: Path) -> None:
    """[decode] png_encoder, or S3LATENT_PNG_ENCODER over it; nothing else reads the env."""
    assert load_config(env={}).decode.png_encoder == "auto"
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[decode]\npng_encoder = "pillow"\n')
    assert load_config(cfg_file, env={}).decode.png_encoder == "pillow"
    assert load_config(cfg_file, env={PNG_ENCODER_ENV: "FPNG"}).decode.png_encoder == "fpng"
    with pytest.raises(ConfigError, match="png_encoder"):
        load_config(env={PNG_ENCODER_ENV: "zopfli"})


@pytest.mark.usefixtures("no_fpng")
def test_missing_fpng_new_conversions_fall_back_unless_required() -> None:
    assert not encoder_installed(FPNG)
    assert settings_for_upload(_png(_pixels())) == RenderSettings("PNG")
    with pytest.raises(EncoderUnavailable, match="fpng"):
        settings_for_upload(_png(_pixels()), "fpng")


# -- reads never substitute an encoder -------------------------------------------------------

@pytest.mark.usefixtures("no_fpng")
def test_stored_fpng_settings_without_fpng_raise() -> None:
    pixels = _pixels()
    for target in (None, 10**6, 100):
        with pytest.raises(EncoderUnavailable, match=r"pip install 'fpng"):
            encode_rendition_sized(pixels, FPNG_SETTINGS, target)


def test_unknown_or_mismatched_encoders_raise() -> None:
    assert encoder_installed(PILLOW) and not encoder_installed("nosuch")
    for settings in (RenderSettings("PNG", encoder="nosuch"),
                     RenderSettings("JPEG", encoder=FPNG), RenderSettings("WEBP", encoder=FPNG)):
        with pytest.raises(EncoderUnavailable):
            encode_rendition_sized(_pixels(), settings, None)


class _FakePipeline:
    """Stage 2 stand-in: fixed pixels, so only stage 3 is under test."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels
        self.devices = [SimpleNamespace(device=torch.device("cpu"))]
        self.threads: list[int | None] = []

    async def decode(self, model_id: str, latent: torch.Tensor,
                     tiling: object = None, threads: int | None = None) -> np.ndarray:
        self.threads.append(threads)
        return self.pixels

    async def close(self) -> None:
        return None


def _container(settings: RenderSettings, size: int, extra: dict[str, object] | None = None
               ) -> bytes:
    latent = torch.randn(4, 8, 8)
    payload, params = codecs.get_codec("lossless").encode(latent)
    return pack(ContainerHeader(
        model="tiny", shape=[4, 8, 8], dtype="float32", codec="lossless", codec_params=params,
        size=size, etag="0" * 32, content_type="image/png",
        last_modified="2026-01-01T00:00:00+00:00", image_format="png",
        encoder=settings_dict(settings), extra=dict(extra or {})), payload)


async def test_renderer_decodes_with_the_recorded_thread_count() -> None:
    """CPU bytes depend on the intra-op thread count: a container made with 3 threads is
    decoded with 3, whatever this node's own setting; older containers with the node's."""
    pipeline = _FakePipeline(_pixels(3))
    renderer = Renderer(models=None, pipeline=pipeline, workers=1)  # type: ignore[arg-type]
    try:
        png = RenderSettings("PNG")
        await renderer.rendition("b", "k", "e1", _container(png, 200_000, {"cpu_threads": 3}))
        await renderer.rendition("b", "k", "e2", _container(png, 200_000))
        await renderer.rendition("b", "k", "e3", _container(png, 200_000,
                                                            {"cpu_threads": "3; rm -rf"}))
        assert pipeline.threads == [3, None, None]
    finally:
        await renderer.close()


@pytest.mark.parametrize("hide", [False, True])
async def test_renderer_uses_the_stored_encoder_or_fails(hide: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if not HAVE_FPNG and not hide:
        pytest.skip("fpng not installed")
    pixels = _pixels(3)
    target = 200_000
    expected = None if hide else encode_rendition_sized(pixels, FPNG_SETTINGS, target)[0]
    if hide:
        monkeypatch.setitem(sys.modules, "fpng", None)
    renderer = Renderer(models=None, pipeline=_FakePipeline(pixels), workers=1)  # type: ignore
    try:
        raw = _container(FPNG_SETTINGS, target)
        if hide:
            with pytest.raises(EncoderUnavailable, match="fpng"):
                await renderer.rendition("b", "k", "e", raw)
        else:
            data, _ = await renderer.rendition("b", "k", "e", raw)
            assert data == expected and len(data) == target and b"fdEC" in data
    finally:
        await renderer.close()


# -- end to end: converted with fpng, read without it, read with it again ---------------------

@needs_fpng
@pytest.mark.slow
def test_gateway_fpng_object_is_500_without_fpng_and_identical_with_it(
        tiny_model: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, config = tmp_path / "data", _config(tiny_model, codec="lossless")
    _, sidecar, pixels = make_pair(tiny_model, seed=11, h=24, w=24)
    # An uncompressed upload: larger than fpng's output, so the rendition can be fpng + padding.
    image = _png(pixels, compress_level=0)
    monkeypatch.setenv(PNG_ENCODER_ENV, "fpng")
    gw = GatewayProcess(f"file://{data_dir}", tmp_path, config=config).start()
    try:
        s3 = gw.client()
        s3.create_bucket(Bucket="enc")
        s3.put_object(Bucket="enc", Key="f.png", Body=image, ContentType="image/png")
        s3.put_object(Bucket="enc", Key="f.png.latent.safetensors", Body=sidecar)
        head = wait_latent(s3, "enc", "f.png")
        first = s3.get_object(Bucket="enc", Key="f.png")["Body"].read()
    finally:
        gw.stop()
    assert len(first) == len(image) == head["ContentLength"] and b"fdEC" in first
    assert head["ETag"] == f'"{hashlib.md5(first).hexdigest()}"'
    assert psnr(decode_image_bytes(first)[0], pixels) >= 40.0

    # The same data directory, fpng shadowed by a package that fails to import.
    monkeypatch.delenv(PNG_ENCODER_ENV)
    shadow = tmp_path / "shadow" / "fpng"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('fpng hidden by the test')\n")
    original_path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(shadow.parent), *filter(None, [original_path])]))
    gw = GatewayProcess(f"file://{data_dir}", tmp_path, config=config).start()
    try:
        with pytest.raises(ClientError) as exc:
            gw.client(max_attempts=1).get_object(Bucket="enc", Key="f.png")["Body"].read()
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert "fpng hidden by the test" in gw.log() and "pip install 'fpng" in gw.log()
    finally:
        gw.stop()

    if original_path is None:
        monkeypatch.delenv("PYTHONPATH")
    else:
        monkeypatch.setenv("PYTHONPATH", original_path)
    gw = GatewayProcess(f"file://{data_dir}", tmp_path, config=config).start()
    try:
        again = gw.client().get_object(Bucket="enc", Key="f.png")["Body"].read()
    finally:
        gw.stop()
    assert again == first
