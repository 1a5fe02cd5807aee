"""`auto` admission: how many model decodes it costs, and that a wrong step prediction can
cost decodes but never fidelity (s3latent/objects/admission.py, s3latent/latent/autostep.py).

A tiny TAESD-architecture model with seeded random weights stands in for TAEF2; every model
decode of an admission goes through `DecodeServices.decode_pixels`, which is counted.
"""

from __future__ import annotations

import hashlib
import io
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

from s3latent.backends.base import ObjectInfo, ObjectMeta
from s3latent.config import BucketSettings, Config, DecodeSettings
from s3latent.decode.services import DecodeServices
from s3latent.latent import autostep
from s3latent.latent.codec import PredictiveCodec, get_codec
from s3latent.latent.container import unpack
from s3latent.latent.fidelity import decode_image_bytes, psnr
from s3latent.latent.rendition import encode_rendition_sized, settings_for_upload
from s3latent.models.tae import TAE_ARCHS, build_tae_decoder
from s3latent.objects import admission
from s3latent.objects.admission import AUTO_MARGIN_DB, Admitter

LADDER = autostep.LADDER


@pytest.fixture
async def decoding(tmp_path: Path) -> Any:
    torch.manual_seed(7)
    path = tmp_path / "dec.pth"
    torch.save(build_tae_decoder(TAE_ARCHS["taesd"]).state_dict(), path)
    cfg = Config(models={"tiny": {"kind": "tae", "arch": "taesd", "decoder": str(path)}})
    cfg.decode = DecodeSettings(device="cpu")
    services = DecodeServices(cfg)
    await services.ready()
    calls: list[int] = []
    real = services.decode_pixels

    async def counting(*args: Any, **kwargs: Any) -> np.ndarray:
        calls.append(1)
        return await real(*args, **kwargs)

    services.decode_pixels = counting  # type: ignore[method-assign]
    services.calls = calls  # type: ignore[attr-defined]
    yield services
    await services.close()


async def _pair(decoding: DecodeServices, seed: int = 0) -> tuple[bytes, bytes, torch.Tensor]:
    latent = torch.randn(4, 24, 24, generator=torch.Generator().manual_seed(seed)).half()
    pixels = await decoding.decode_pixels("tiny", latent.float())
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue(), save_safetensors({"latent": latent}, metadata={"model": "tiny"}), latent


async def _scores(decoding: DecodeServices, image: bytes, latent: torch.Tensor) -> list[float]:
    """Every ladder step scored as admission scores it (PSNR of the sized rendition)."""
    codec = get_codec("q4p", model="tiny")
    assert isinstance(codec, PredictiveCodec)
    upload, _ = decode_image_bytes(image)
    render = settings_for_upload(image)
    out = []
    for step in LADDER:
        c = codec.with_step(step)
        payload, params = c.encode(latent)
        restored = c.decode(payload, params, tuple(latent.shape), "float16")
        pixels = await decoding.decode_pixels("tiny", restored.float())
        data, _ = encode_rendition_sized(pixels, render, len(image))
        out.append(psnr(decode_image_bytes(data)[0], upload) if len(data) == len(image)
                   else -math.inf)
    return out


def _info(key: str, data: bytes, content_type: str) -> ObjectInfo:
    return ObjectInfo(key, len(data), hashlib.md5(data).hexdigest(),
                      datetime(2026, 1, 1, tzinfo=UTC), ObjectMeta(content_type=content_type))


async def _admit(decoding: DecodeServices, image: bytes, side: bytes, min_psnr: float
                 ) -> admission.Admission:
    return await Admitter(decoding).admit(
        BucketSettings(codec="auto", min_psnr=min_psnr), "k.png",
        _info("k.png", image, "image/png"), image,
        _info("k.png.latent.safetensors", side, "binary/octet-stream"), side)


async def _setup(decoding: DecodeServices) -> tuple[bytes, bytes, list[float], float, int]:
    """A pair, its score table, a min_psnr whose boundary falls mid-ladder, and that step."""
    image, side, latent = await _pair(decoding)
    scores = await _scores(decoding, image, latent)
    k = 5  # the coarsest step that should pass: halfway between steps 4 and 5's scores
    assert all(math.isfinite(s) for s in scores[3:]) and scores[4] + 1.0 < scores[5]
    target = (scores[4] + scores[5]) / 2
    decoding.calls.clear()  # type: ignore[attr-defined]
    return image, side, scores, target - AUTO_MARGIN_DB, k


def _check(result: admission.Admission, image: bytes, min_psnr: float) -> float:
    """The admitted rendition meets the policy with the margin, measured independently."""
    value = psnr(decode_image_bytes(result.rendition)[0], decode_image_bytes(image)[0])
    assert value >= min_psnr + AUTO_MARGIN_DB
    assert result.header.psnr == pytest.approx(value)
    return value


def _predicting(monkeypatch: pytest.MonkeyPatch, values: list[float], calibrated: bool = True
                ) -> None:
    monkeypatch.setattr(admission, "predict_psnr",
                        lambda codec, latent, model, image: (list(values), calibrated))


async def test_exact_prediction_admits_with_one_decode(decoding: DecodeServices,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The step predicted right: one model decode for the whole admission (it was 5 before:
    four bisection trials and the re-decode of the chosen payload)."""
    image, side, scores, min_psnr, k = await _setup(decoding)
    _predicting(monkeypatch, scores)
    result = await _admit(decoding, image, side, min_psnr)
    assert decoding.calls == [1]  # type: ignore[attr-defined]
    assert result.header.codec == "q4p"
    assert result.header.codec_params["step"] == pytest.approx(LADDER[k])
    _check(result, image, min_psnr)


async def test_uncalibrated_model_decodes_pinned(decoding: DecodeServices) -> None:
    """No coefficients for the tiny model: mid-ladder start, then the codec's own error
    guides the rest. The chosen payload is never decoded a second time."""
    image, side, _, min_psnr, k = await _setup(decoding)
    result = await _admit(decoding, image, side, min_psnr)
    assert result.header.codec_params["step"] == pytest.approx(LADDER[k])
    assert len(decoding.calls) == 2  # type: ignore[attr-defined]
    _check(result, image, min_psnr)


@pytest.mark.parametrize("error_db", [-25.0, 25.0])
async def test_prediction_wrong_by_far_still_meets_the_policy(
        decoding: DecodeServices, monkeypatch: pytest.MonkeyPatch, error_db: float) -> None:
    """Too optimistic (starts at the coarsest step, which fails) or too pessimistic (starts at
    the finest): more decodes, the same step, the policy met."""
    image, side, scores, min_psnr, k = await _setup(decoding)
    _predicting(monkeypatch, [s + error_db for s in scores])
    result = await _admit(decoding, image, side, min_psnr)
    assert result.header.codec_params["step"] == pytest.approx(LADDER[k])
    assert 2 <= len(decoding.calls) <= 4  # type: ignore[attr-defined]
    _check(result, image, min_psnr)


async def test_prediction_with_the_wrong_shape_still_meets_the_policy(
        decoding: DecodeServices, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prediction saying coarser is better (reversed): a passing step, checked."""
    image, side, scores, min_psnr, _ = await _setup(decoding)
    _predicting(monkeypatch, [100.0 - s for s in scores])
    result = await _admit(decoding, image, side, min_psnr)
    value = _check(result, image, min_psnr)
    step = result.header.codec_params["step"]
    assert scores[min(range(len(LADDER)), key=lambda i: abs(LADDER[i] - step))] == value


async def test_no_step_passes_falls_back_as_before(decoding: DecodeServices) -> None:
    """A target no step meets: the search ends, q8p then lossless are tried as before."""
    image, side, scores, _, _ = await _setup(decoding)
    result = await _admit(decoding, image, side, max(scores) + 1.0)
    assert result.header.codec in ("q8p", "lossless")


async def test_admission_is_deterministic(decoding: DecodeServices) -> None:
    image, side, _, min_psnr, _ = await _setup(decoding)
    first = await _admit(decoding, image, side, min_psnr)
    second = await _admit(decoding, image, side, min_psnr)
    assert first.container == second.container and first.rendition == second.rendition
    assert unpack(first.container)[0].codec == "q4p"
    data, _ = await decoding.renderer.rendition("b", "k.png", "e", first.container)
    assert data == first.rendition  # what reads serve is what admission checked
