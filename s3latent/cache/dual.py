"""The dual-format cache: one byte budget split between encoded images and latents.

alpha * memory holds encoded images (hits cost nothing but the copy out),
(1 - alpha) * memory holds compressed latents (a hit costs a decode, a miss a
backend fetch and a decode). Latents are several times smaller than their
images, so the latent tier holds many more objects; an object enters the image
tier after `promote_after` latent-tier hits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from .policies import make_cache

_MAX_COUNTS = 100_000


class DualCache:
    """See the module docstring."""

    def __init__(self, memory: int, alpha: float = 0.5, *, policy: str = "default",
                 promote_after: int = 2) -> None:
        self.memory = int(memory)
        self._alpha = min(1.0, max(0.0, alpha))
        self.promote_after = promote_after
        self._images = make_cache(policy, int(self.memory * self._alpha))
        self._latents = make_cache(policy, self.memory - int(self.memory * self._alpha))
        self._hits: OrderedDict[Hashable, int] = OrderedDict()
        self.counts = {"image_hits": 0, "image_misses": 0, "latent_hits": 0, "latent_misses": 0}

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._alpha = min(1.0, max(0.0, float(value)))
        image_bytes = int(self.memory * self._alpha)
        self._images.capacity = image_bytes
        self._latents.capacity = self.memory - image_bytes

    def get_image(self, key: Hashable) -> Any | None:
        value = self._images.get(key)
        self.counts["image_hits" if value is not None else "image_misses"] += 1
        return value

    def get_latent(self, key: Hashable) -> Any | None:
        value = self._latents.get(key)
        if value is None:
            self.counts["latent_misses"] += 1
            return None
        self.counts["latent_hits"] += 1
        self._hits[key] = self._hits.pop(key, 0) + 1
        if len(self._hits) > _MAX_COUNTS:
            self._hits.popitem(last=False)
        return value

    def should_promote(self, key: Hashable) -> bool:
        return self._images.capacity > 0 and self._hits.get(key, 0) >= self.promote_after

    def put_image(self, key: Hashable, data: Any) -> None:
        self._images.put(key, data, len(data))

    def put_latent(self, key: Hashable, data: Any) -> None:
        self._latents.put(key, data, len(data))

    def peek_image(self, key: Hashable) -> Any | None:
        """The image-tier value without counting a hit or touching recency."""
        return self._images.peek(key)

    def peek_latent(self, key: Hashable) -> Any | None:
        """The latent-tier value without counting a hit or touching recency."""
        return self._latents.peek(key)

    def drop_image(self, key: Hashable) -> None:
        self._images.remove(key)

    def drop_latent(self, key: Hashable) -> None:
        self._latents.remove(key)
        self._hits.pop(key, None)

    def invalidate(self, key: Hashable) -> None:
        self._images.remove(key)
        self._latents.remove(key)
        self._hits.pop(key, None)

    @property
    def stats(self) -> dict[str, int]:
        return {**self.counts, "image_bytes": self._images.used_bytes,
                "latent_bytes": self._latents.used_bytes, "image_items": len(self._images),
                "latent_items": len(self._latents)}
