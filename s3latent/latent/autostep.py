"""Where the `auto` step search starts, and the search itself.

Why: `auto` picks the coarsest step of the predictive codec whose rendition still meets the
policy, and every candidate it tries costs a full decode of the model (~3.6 s at 1024² for
TAEF2 on a small CPU). Today's bisection over the ladder tries four or five steps. Most of
that is avoidable: the codec's own quantisation error at each step can be computed without
the model (one pass of its closed loop, milliseconds), and the image PSNR of a step follows
it closely once one per-image offset is known. So:

1. ``step_distortion``: per ladder step, the mean squared quantisation error in the codec's
   gain-weighted transform domain (the gains are the decoder's channel sensitivities).
2. ``predict_psnr``: PSNR per step = a calibrated linear function of that distortion, a few
   statistics of the latent and the texture of the image it must match (coefficients per
   model in ``autostep.json``, fitted offline on the bench corpus by
   ``python -m s3latent.bench.auto_calibrate``).
3. ``search_from_prediction``: decode the coarsest step predicted to pass; the measured PSNR
   corrects the prediction for every other step (one offset); then step coarser while the
   corrected prediction says the next one may still pass, or finer while it fails. Every step
   it settles on has been decoded and scored: the fidelity check is never skipped.

For a model without coefficients the same search starts mid-ladder, the first decode
supplying the offset.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import torch

from .codec import PredictiveCodec, _phases, dtype_name

__all__ = [
    "LADDER",
    "SearchResult",
    "latent_features",
    "predict_psnr",
    "search_from_prediction",
    "step_distortion",
]

# The steps `auto` chooses from, coarse to fine (the ladder `encode_to_target` bisects).
LADDER: tuple[float, ...] = (1.0, 0.8, 0.6, 0.45, 0.34, 0.25, 0.18, 0.13, 0.09)
_COEFFS = "autostep.json"


def _domain(codec: PredictiveCodec, latent: torch.Tensor) -> tuple[np.ndarray, list[float]]:
    """The codec's transformed latent and its per-phase prediction weights (as `encode`)."""
    x = latent.detach().to("cpu").float().numpy()
    y, _ = codec._transform(x)
    return y, codec._alphas(y, _phases(*y.shape[1:]))


def step_distortion(codec: PredictiveCodec, latent: torch.Tensor,
                    steps: Sequence[float] = LADDER) -> list[float]:
    """Mean squared quantisation error per step in the codec's weighted transform domain.

    The closed loop `encode` runs, without entropy coding: ~25 ms per step at 32x128x128.
    """
    y, alphas = _domain(codec, latent)
    out = []
    for s in steps:
        rec, _ = codec.with_step(s)._loop(y.shape, alphas, y=y)  # type: ignore[arg-type]
        out.append(float(np.mean((rec.astype(np.float64) - y) ** 2)))
    return out


def latent_features(codec: PredictiveCodec, latent: torch.Tensor) -> dict[str, float]:
    """Content statistics the image PSNR depends on besides the quantisation error.

    ``log_rms``: energy of the weighted latent; ``log_grad``: energy of its finest-level
    prediction residual (the detail the decoder turns into texture); ``log_pixels``: size.
    """
    y, _ = _domain(codec, latent)
    rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
    grad = np.concatenate([np.diff(y, axis=1).reshape(-1), np.diff(y, axis=2).reshape(-1)])
    grms = float(np.sqrt(np.mean(grad.astype(np.float64) ** 2))) if grad.size else 0.0
    return {"log_rms": math.log10(rms + 1e-9), "log_grad": math.log10(grms + 1e-9),
            "log_pixels": math.log2(y.shape[1] * y.shape[2])}


def image_features(pixels: np.ndarray) -> dict[str, float]:
    """Texture of the image the latent must reproduce (the upload, or the reference decode).

    How much a latent error costs in pixels depends mostly on this: the same error moves
    more pixel value where the image has edges and texture (grass) than where it is flat
    (cells on a plain background), a spread of ~15 dB the latent's own statistics miss.
    ``img_grad``: RMS of the first differences; ``img_lap``: RMS of the 4-neighbour
    Laplacian; both of the [0, 1] pixel values.
    """
    im = np.asarray(pixels, dtype=np.float32) / np.float32(255.0)
    if im.ndim == 2:
        im = im[..., None]
    gx = np.diff(im, axis=1)
    gy = np.diff(im, axis=0)
    grad = (float(np.mean(gx.astype(np.float64) ** 2))
            + float(np.mean(gy.astype(np.float64) ** 2))) / 2
    lap = (4 * im[1:-1, 1:-1] - im[:-2, 1:-1] - im[2:, 1:-1] - im[1:-1, :-2] - im[1:-1, 2:])
    lap_ms = float(np.mean(lap.astype(np.float64) ** 2)) if lap.size else 0.0
    return {"img_grad": 0.5 * math.log10(grad + 1e-12),
            "img_lap": 0.5 * math.log10(lap_ms + 1e-12)}


FEATURES = ("log_rms", "log_grad", "log_pixels", "img_grad", "img_lap")


def design_row(neg_db_distortion: float, features: dict[str, float]) -> list[float]:
    """The regression's inputs: 1, -10 log10 D(step), then the latent's features."""
    return [1.0, neg_db_distortion, *(features[k] for k in FEATURES)]


@cache
def _coefficients() -> dict[str, Any]:
    text = resources.files(__package__).joinpath(_COEFFS).read_text()
    return json.loads(text)


def model_coefficients(model: str | None) -> list[float] | None:
    """The fitted coefficients for `model`, or None when it has none (search starts mid-ladder)."""
    entry = _coefficients().get("models", {}).get(model or "")
    return None if entry is None else [float(c) for c in entry["coef"]]


def predict_psnr(codec: PredictiveCodec, latent: torch.Tensor, model: str | None,
                 image: np.ndarray | None, steps: Sequence[float] = LADDER
                 ) -> tuple[list[float], bool]:
    """(predicted PSNR per step, calibrated?) of `latent` against `image` (uint8 HxWx3).

    Without coefficients for `model` (or without the image), -10 log10 D(step) only: right
    up to one constant, which the search's first decode measures.
    """
    dist = [-10.0 * math.log10(max(d, 1e-20)) for d in step_distortion(codec, latent, steps)]
    coef = model_coefficients(model)
    if coef is None or image is None:
        return dist, False
    feats = {**latent_features(codec, latent), **image_features(image)}
    return [float(np.dot(coef, design_row(d, feats))) for d in dist], True


# Search tuning (dB), chosen with the calibration data (docs/bench-storage.md):
# START_MARGIN: the first decode is the coarsest step predicted >= target + START_MARGIN;
# TRY_COARSER: after a pass, the next coarser step is tried when its corrected prediction is
# >= target - TRY_COARSER; TRY_FINER: after a failure, the coarsest finer step whose corrected
# prediction is >= target + TRY_FINER is tried next.
START_MARGIN, TRY_COARSER, TRY_FINER = 0.5, 0.5, 0.2


@dataclass
class SearchResult:
    """The chosen step's payload, params and score, and every step that was decoded."""

    payload: bytes
    params: dict[str, Any]
    score: float
    step: float
    passed: bool
    index: int  # position of the chosen step in `tried`
    tried: list[tuple[float, float]] = field(default_factory=list)  # (step, score) in order


def search_from_prediction(
    codec: PredictiveCodec,
    latent: torch.Tensor,
    fidelity: Callable[[torch.Tensor], float],
    target: float,
    predicted: Sequence[float] | None,
    steps: Sequence[float] = LADDER,
    *,
    calibrated: bool = True,
) -> SearchResult:
    """The coarsest step of `steps` that scores `fidelity` >= target, searched from a prediction.

    `predicted`: expected score per step (same order as `steps`, coarse to fine); with
    calibrated=False it need only be right up to a constant, and the search starts mid-ladder
    (the first decode measures the constant). None: start mid-ladder and step by one. Each
    trial encodes, decodes the payload and calls `fidelity` (one model decode at admission).
    Like the bisection it replaces, it assumes finer steps never score lower. When no step
    passes, the finest is returned with passed=False.
    """
    ladder = [float(s) for s in steps]
    n = len(ladder)
    pred = list(predicted) if predicted is not None else [float(-i) for i in range(n)]
    if len(pred) != n:
        raise ValueError("one prediction per step")
    shape, dt = tuple(latent.shape), dtype_name(latent.dtype)
    cache_: dict[int, tuple[bytes, dict[str, Any], float, int]] = {}
    tried: list[tuple[float, float]] = []

    def trial(i: int) -> float:
        if i not in cache_:
            c = codec.with_step(ladder[i])
            payload, params = c.encode(latent)
            score = float(fidelity(c.decode(payload, params, shape, dt)))
            cache_[i] = (payload, params, score, len(tried))
            tried.append((ladder[i], score))
        return cache_[i][2]

    if predicted is None or not calibrated:
        i = n // 2
    else:
        ok = [j for j in range(n) if pred[j] >= target + START_MARGIN]
        i = ok[0] if ok else n - 1
    offset = 0.0
    best: int | None = None  # coarsest passing index found
    failed = -1  # finest failing index coarser than `best` (every coarser one fails too)
    while True:
        score = trial(i)
        if math.isfinite(score):
            offset = score - pred[i]
        if score >= target:
            best = i if best is None else min(best, i)
        else:
            failed = max(failed, i)
        if best is None:  # nothing passes yet: finer
            finer = range(failed + 1, n)
            if not finer:
                break
            if predicted is None or not math.isfinite(score):
                i = failed + 1
            else:
                i = next((j for j in finer if pred[j] + offset >= target + TRY_FINER), n - 1)
            continue
        j = best - 1  # a pass: one coarser, if it is unknown and may pass
        if j <= failed:
            break
        if predicted is None or pred[j] + offset >= target - TRY_COARSER:
            i = j
            continue
        break
    if best is None:
        payload, params, score, at = cache_[n - 1]
        return SearchResult(payload, params, score, ladder[n - 1], False, at, tried)
    payload, params, score, at = cache_[best]
    return SearchResult(payload, params, score, ladder[best], True, at, tried)
