"""The `auto` step search started from a prediction (s3latent/latent/autostep.py).

The search is replayed on score tables: a codec whose "decode" returns its step and a fidelity
that looks the step up, so each trial is counted and the answer is known in advance.
"""

from __future__ import annotations

import json
import math
import random
from importlib import resources
from typing import Any

import numpy as np
import pytest
import torch

from s3latent.latent import autostep
from s3latent.latent.autostep import LADDER, search_from_prediction
from s3latent.latent.codec import PredictiveCodec, encode_to_target, get_codec

TARGET = 40.3


class _StepCodec(PredictiveCodec):
    """A codec whose decoded latent is its step: the fidelity below scores by step."""

    def with_step(self, step: float) -> _StepCodec:
        return _StepCodec(self.name, step)

    def encode(self, latent: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
        return f"{self.step}".encode(), {"step": self.step}

    def decode(self, payload: bytes, params: dict[str, Any], shape: tuple[int, ...],
               dtype: str) -> torch.Tensor:
        return torch.tensor([params["step"]])


def _run(scores: list[float], predicted: list[float] | None, calibrated: bool = True
         ) -> tuple[autostep.SearchResult, list[float]]:
    calls: list[float] = []

    def fidelity(t: torch.Tensor) -> float:
        i = min(range(len(LADDER)), key=lambda i: abs(LADDER[i] - float(t[0])))
        calls.append(LADDER[i])
        return scores[i]

    found = search_from_prediction(_StepCodec("t", 1.0), torch.zeros(1, 1, 1), fidelity,
                                   TARGET, predicted, calibrated=calibrated)
    return found, calls


def _coarsest_passing(scores: list[float]) -> int | None:
    return next((i for i, s in enumerate(scores) if s >= TARGET), None)


def _table(rng: random.Random) -> list[float]:
    """A monotone score table (finer never lower), coarse steps sometimes -inf (length)."""
    top = rng.uniform(25, 60)
    out, value = [], top
    for i in range(len(LADDER)):
        value += rng.uniform(1.0, 3.5) if i else 0.0
        out.append(value)
    cut = rng.choice([0, 0, 0, 2, 4])
    return [-math.inf] * cut + out[cut:]


def test_exact_prediction_takes_one_or_two_decodes() -> None:
    scores = [33.0, 35.1, 37.6, 40.0, 42.6, 45.3, 48.1, 50.9, 54.0]
    found, calls = _run(scores, scores)
    assert found.passed and found.step == LADDER[4]
    assert calls == [LADDER[4], LADDER[3]]  # 40.0 is within TRY_COARSER: checked, fails
    scores[3] = 39.0  # far enough below: not worth a decode
    found, calls = _run(scores, scores)
    assert found.step == LADDER[4] and calls == [LADDER[4]]
    assert found.tried == [(LADDER[4], 42.6)] and found.index == 0


@pytest.mark.parametrize("error_db", [-30.0, -3.0, 0.0, 2.0, 30.0])
def test_prediction_off_by_a_constant_still_finds_the_coarsest_step(error_db: float) -> None:
    rng = random.Random(5)
    for _ in range(300):
        scores = _table(rng)
        found, calls = _run(scores, [s + error_db if math.isfinite(s) else 20.0 + error_db
                                     for s in scores])
        best = _coarsest_passing(scores)
        if best is None:
            assert not found.passed and found.step == LADDER[-1]
            continue
        assert found.passed and found.step == LADDER[best] and found.score >= TARGET
        assert len(calls) == len(set(calls))  # no step decoded twice


def test_wrong_predictions_always_end_on_a_passing_step() -> None:
    """Predictions of any shape (noise, reversed, flat): the step chosen was decoded and passed."""
    rng = random.Random(11)
    for k in range(500):
        scores = _table(rng)
        kind = k % 3
        if kind == 0:
            predicted = [rng.uniform(0, 80) for _ in LADDER]
        elif kind == 1:
            predicted = [-s if math.isfinite(s) else 0.0 for s in scores]
        else:
            predicted = [rng.uniform(0, 80)] * len(LADDER)
        found, calls = _run(scores, predicted)
        best = _coarsest_passing(scores)
        if best is None:
            assert not found.passed
            continue
        assert found.passed and found.score >= TARGET
        assert found.step in calls and scores[LADDER.index(found.step)] >= TARGET
        assert LADDER.index(found.step) >= best


def test_uncalibrated_starts_mid_ladder_and_matches_the_bisection() -> None:
    rng = random.Random(3)
    for _ in range(200):
        scores = _table(rng)
        offset = rng.uniform(-40, 40)
        found, calls = _run(scores, [s + offset if math.isfinite(s) else 0.0 for s in scores],
                            calibrated=False)
        assert calls[0] == LADDER[len(LADDER) // 2]
        best = _coarsest_passing(scores)
        if best is not None:
            assert found.step == LADDER[best]


def test_real_codec_same_answer_as_the_bisection_with_fewer_decodes() -> None:
    """On a real latent and the codec's own error as fidelity, from its uncalibrated
    prediction: the same payload as `encode_to_target`, in fewer decodes."""
    x = torch.randn(8, 32, 32, generator=torch.Generator().manual_seed(2))
    codec = get_codec("q4p")
    assert isinstance(codec, PredictiveCodec)
    old_calls: list[float] = []
    new_calls: list[float] = []

    def fidelity(calls: list[float]) -> Any:
        def score(y: torch.Tensor) -> float:
            value = 10 * math.log10(1.0 / float((y.float() - x.float()).pow(2).mean()))
            calls.append(value)
            return value
        return score

    target = 30.0
    payload, params, _ = encode_to_target(codec, x, fidelity(old_calls), target)
    predicted, calibrated = autostep.predict_psnr(codec, x, None, None)
    assert not calibrated
    found = search_from_prediction(codec, x, fidelity(new_calls), target, predicted,
                                   calibrated=False)
    assert found.payload == payload and found.params == params
    assert len(new_calls) <= 2 < len(old_calls)


def test_prediction_is_deterministic_and_cheap_to_compute() -> None:
    x = torch.randn(32, 64, 64, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    codec = get_codec("q4p", model="taef2")
    assert isinstance(codec, PredictiveCodec)
    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    a = autostep.predict_psnr(codec, x, "taef2", image)
    b = autostep.predict_psnr(codec, x.clone(), "taef2", image.copy())
    assert a == b and a[1] is True
    assert autostep.predict_psnr(codec, x, "taef2", None)[1] is False  # no image: uncalibrated
    assert all(p > q for p, q in zip(a[0][1:], a[0][:-1], strict=False))  # finer: higher


def test_image_features_rank_texture() -> None:
    """A flat image scores lower than a textured one: its latent errors cost fewer dB."""
    rng = np.random.default_rng(1)
    flat = np.full((64, 64, 3), 120, dtype=np.uint8)
    flat[::8] = 125
    noisy = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    f, n = autostep.image_features(flat), autostep.image_features(noisy)
    assert f["img_grad"] < n["img_grad"] and f["img_lap"] < n["img_lap"]
    assert autostep.image_features(noisy[..., 0])["img_grad"] == pytest.approx(n["img_grad"],
                                                                                abs=0.1)


def test_committed_coefficients_are_in_the_package() -> None:
    doc = json.loads(resources.files("s3latent.latent").joinpath("autostep.json").read_text())
    coef = doc["models"]["taef2"]["coef"]
    assert len(coef) == 2 + len(autostep.FEATURES)
    assert 0.5 < coef[1] < 1.5  # PSNR follows the codec's own error, roughly dB for dB
    assert autostep.model_coefficients("taef2") == coef
    assert autostep.model_coefficients("no-such-model") is None
