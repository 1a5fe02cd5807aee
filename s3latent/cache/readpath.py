"""The gateway's read-path cache: the dual-format cache, the resizer, their metrics.

Hot objects are kept as encoded images (the image tier), warm latent objects as
their containers (the latent tier); a latent object enters the image tier
after `promote_after` latent-tier hits. Plain images small enough are cached in
the image tier too, so an image store without latents (ImgStore) gets the same
memory to work with in comparisons.

Entries are keyed by (bucket, key) and dropped when a write or delete of the
key goes through this node. Several nodes in front of one backend keep their
own caches; route a key's writes and reads to one owner (DESIGN.md "Scale"),
or accept reads that lag another node's write until eviction.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from ..backends.base import ObjectInfo
from ..config import CacheSettings

PLAIN_CACHE_MAX = 16 * 1024 * 1024
PATHS = ("image_hit", "latent_hit", "miss", "plain")


@dataclass
class Entry:
    """A cached object: its logical info and bytes (rendition, or container)."""

    info: ObjectInfo
    data: bytes
    physical_etag: str = ""

    def __len__(self) -> int:
        return len(self.data)


class ReadCache:
    """See the module docstring."""

    def __init__(self, settings: CacheSettings, registry: CollectorRegistry) -> None:
        from .dual import DualCache
        from .resizer import AdaptiveResizer

        self.settings = settings
        self.dual = DualCache(settings.memory, settings.alpha, policy=settings.policy,
                              promote_after=settings.promote_after)
        self.resizer = (AdaptiveResizer(settings.memory, settings.alpha, window=settings.window,
                                        step=settings.alpha_step,
                                        alpha_min=settings.alpha_min,
                                        alpha_max=settings.alpha_max,
                                        sample_rate=settings.sample_rate,
                                        policy=settings.policy,
                                        promote_after=settings.promote_after)
                        if settings.adaptive else None)
        alpha = Gauge("s3latent_cache_alpha", "Share of the cache budget for images",
                      registry=registry)
        alpha.set_function(lambda: self.dual.alpha)
        estimate = Gauge("s3latent_cache_alpha_estimate_seconds",
                         "Resizer's estimated mean latency per candidate alpha", ["alpha"],
                         registry=registry)
        self._estimate = estimate
        tier_bytes = Gauge("s3latent_cache_bytes", "Bytes held per tier", ["tier"],
                           registry=registry)
        tier_bytes.labels("image").set_function(lambda: self.dual.stats["image_bytes"])
        tier_bytes.labels("latent").set_function(lambda: self.dual.stats["latent_bytes"])
        ratio = Gauge("s3latent_cache_hit_ratio", "Hit ratio per tier", ["tier"],
                      registry=registry)
        ratio.labels("image").set_function(lambda: self._ratio("image"))
        ratio.labels("latent").set_function(lambda: self._ratio("latent"))

    def _ratio(self, tier: str) -> float:
        stats = self.dual.stats
        hits, misses = stats[f"{tier}_hits"], stats[f"{tier}_misses"]
        return hits / (hits + misses) if hits + misses else 0.0

    def image(self, bucket: str, key: str) -> Entry | None:
        entry = self.dual.get_image((bucket, key))
        return entry if isinstance(entry, Entry) else None

    def latent(self, bucket: str, key: str) -> Entry | None:
        entry = self.dual.get_latent((bucket, key))
        return entry if isinstance(entry, Entry) else None

    def put_latent(self, bucket: str, key: str, entry: Entry) -> None:
        self.dual.put_latent((bucket, key), entry)  # type: ignore[arg-type]

    def put_image(self, bucket: str, key: str, entry: Entry) -> None:
        self.dual.put_image((bucket, key), entry)  # type: ignore[arg-type]

    def should_promote(self, bucket: str, key: str) -> bool:
        return self.dual.should_promote((bucket, key))

    def cacheable_plain(self, info: ObjectInfo) -> bool:
        return info.size <= PLAIN_CACHE_MAX and info.meta.content_type.startswith("image/")

    def invalidate(self, bucket: str, key: str) -> None:
        self.dual.invalidate((bucket, key))

    def record(self, bucket: str, key: str, path: str, seconds: float, image_size: int,
               latent_size: int) -> None:
        """One read's path and latency, for the resizer (the object layer's histogram has
        the same samples for /metrics)."""
        if self.resizer is None or path not in PATHS:
            return
        estimates = self.resizer.estimates
        moved = self.resizer.record((bucket, key), image_size, latent_size, path, seconds)
        if moved is not None:
            self.dual.alpha = moved
        if self.resizer.estimates is not estimates:  # a decision was taken, moved or not
            self._estimate.clear()
            for candidate, value in self.resizer.estimates.items():
                self._estimate.labels(f"{candidate:.2f}").set(value)
