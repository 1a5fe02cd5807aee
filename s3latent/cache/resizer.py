"""The adaptive resizer: moves the image/latent split alpha toward lower mean latency.

Three shadow dual caches (at alpha - step, alpha, alpha + step) replay a
spatially hashed sample of the requests (SHARDS-style: keys whose hash falls
under the sampling rate, with memory scaled by the same rate) and count which
path each request would have taken. The latency of each path (image hit,
latent hit + decode, backend fetch + decode) is learned online from the real
requests. Every `window` requests the candidate with the lowest estimated mean
latency wins; alpha moves one bounded step toward it, within [alpha_min,
alpha_max], and the shadows follow it (warm: only their split changes).
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable

from .dual import DualCache

PATHS = ("image_hit", "latent_hit", "miss")


class _Sized:
    """A stand-in value: shadows track sizes, never bytes."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class AdaptiveResizer:
    """See the module docstring."""

    def __init__(self, memory: int, alpha: float = 0.5, *, window: int = 2000,
                 step: float = 0.05, alpha_min: float = 0.05, alpha_max: float = 0.95,
                 sample_rate: float = 0.05, policy: str = "default", promote_after: int = 2,
                 seed: int = 0) -> None:
        self.alpha = min(alpha_max, max(alpha_min, alpha))
        self.window, self.step = window, step
        self.alpha_min, self.alpha_max = alpha_min, alpha_max
        self.sample_rate = sample_rate
        self._seed = seed
        shadow_memory = max(1, int(memory * sample_rate))
        self._shadows = [DualCache(shadow_memory, a, policy=policy, promote_after=promote_after)
                         for a in self._candidates()]
        self._counts = [dict.fromkeys(PATHS, 0) for _ in self._shadows]
        self.latency: dict[str, float | None] = dict.fromkeys(PATHS)
        self.estimates: dict[float, float] = {}
        self._seen = 0

    def _candidates(self) -> list[float]:
        return [min(self.alpha_max, max(self.alpha_min, self.alpha + d))
                for d in (-self.step, 0.0, self.step)]

    def _sampled(self, key: Hashable) -> bool:
        h = zlib.crc32(f"{self._seed}:{key!r}".encode()) / 2**32
        return h < self.sample_rate

    def record(self, key: Hashable, image_size: int, latent_size: int, path: str,
               latency_s: float) -> float | None:
        """Learn from one GET; returns the new alpha when it moved."""
        if path not in PATHS:
            return None
        old = self.latency[path]
        self.latency[path] = latency_s if old is None else 0.9 * old + 0.1 * latency_s
        if self._sampled(key):
            for shadow, counts in zip(self._shadows, self._counts, strict=True):
                counts[self._simulate(shadow, key, image_size, latent_size)] += 1
        self._seen += 1
        if self._seen < self.window:
            return None
        self._seen = 0
        return self._decide()

    @staticmethod
    def _simulate(shadow: DualCache, key: Hashable, image_size: int, latent_size: int) -> str:
        if shadow.get_image(key) is not None:
            return "image_hit"
        if shadow.get_latent(key) is not None:
            if shadow.should_promote(key):
                shadow.put_image(key, _Sized(image_size))
            return "latent_hit"
        shadow.put_latent(key, _Sized(latent_size))
        return "miss"

    def _decide(self) -> float | None:
        known = {p: v for p, v in self.latency.items() if v is not None}
        totals = [sum(c.values()) for c in self._counts]
        if not known or min(totals) == 0:
            return None
        # A path never seen costs what the slowest seen path costs (a safe guess).
        worst = max(known.values())
        estimates = {}
        for shadow, counts, total in zip(self._shadows, self._counts, totals, strict=True):
            mean = sum(n * (known.get(p, worst)) for p, n in counts.items()) / total
            estimates[round(shadow.alpha, 4)] = mean
        self.estimates = estimates
        for counts in self._counts:
            counts.update(dict.fromkeys(PATHS, 0))
        best = min(estimates, key=lambda a: (estimates[a], abs(a - self.alpha)))
        if abs(best - self.alpha) < 1e-9:
            return None
        move = max(-self.step, min(self.step, best - self.alpha))
        self.alpha = min(self.alpha_max, max(self.alpha_min, self.alpha + move))
        for shadow, a in zip(self._shadows, self._candidates(), strict=True):
            shadow.alpha = a
        return self.alpha
