"""The gateway's read-path cache: the dual-format cache, the resizer, their metrics.

Hot objects are kept as encoded images (the image tier), warm latent objects as
their containers (the latent tier); a latent object enters the image tier
after `promote_after` latent-tier hits. Plain images small enough are cached in
the image tier too, so an image store without latents (ImgStore) gets the same
memory to work with in comparisons.

Entries are keyed by (bucket, key) and dropped when a write or delete of the
key goes through this node. Writes elsewhere (another gateway, `s3latent
convert`, any tool on the backend) are caught by revalidation: every entry
remembers the backend object it came from (physical ETag, Last-Modified and the
headers GET sends from its metadata) and
when the backend last showed that object (`confirmed`, monotonic); an entry
older than `[cache] revalidate_after` is checked with one backend HEAD before it
is served (objects.reads), and dropped if the object changed or is gone. So no
entry is served more than `revalidate_after` after the backend stopped holding
its object (docs/configuration.md, "Cached reads and staleness").

A fill that read the backend before a write of its key and lands after the write's
invalidation must not bring the old object back: each key remembers when it was last
invalidated, and an entry whose read started before that is not kept (nor may a GET that
arrives after the invalidation join a fill started before it: `invalidated_at` is part of
the shared-miss key in objects.reads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cachetools import LRUCache
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..backends.base import ObjectInfo
from ..config import CacheSettings

PLAIN_CACHE_MAX = 16 * 1024 * 1024
# Keys whose last invalidation time is remembered; older ones fall back to a watermark.
INVALIDATIONS_KEPT = 200_000
PATHS = ("image_hit", "latent_hit", "miss", "plain")
OUTCOMES = ("fresh", "changed", "gone", "error")


@dataclass
class Entry:
    """A cached object: its logical info and bytes (rendition, or container).

    `physical_etag` and `source` name the backend object the bytes came from (a
    container's ETag, not the rendition's logical one; `source_of`); `confirmed` is when
    (time.monotonic) the backend last showed that object, taken *before* the call that
    showed it, so staleness is never underestimated. An entry without a source never counts
    as current.
    """

    info: ObjectInfo
    data: bytes
    physical_etag: str = ""
    source: tuple[object, ...] = ()
    confirmed: float = float("-inf")

    def __len__(self) -> int:
        return len(self.data)

    @classmethod
    def of(cls, info: ObjectInfo, data: bytes, source: ObjectInfo, confirmed: float) -> Entry:
        """`data` sent as `info`, made from the backend object `source` seen at `confirmed`."""
        return cls(info, data, source.etag, source_of(source), confirmed)

    def derived(self, info: ObjectInfo, data: bytes) -> Entry:
        """Another form of the same source (a rendition of this container), as fresh as it."""
        return Entry(info, data, self.physical_etag, self.source, self.confirmed)

    def same_source(self, current: ObjectInfo | None) -> bool:
        """Whether the backend object `current` (a HEAD's answer) is the one this came from."""
        return current is not None and bool(self.source) and source_of(current) == self.source


def source_of(info: ObjectInfo) -> tuple[object, ...]:
    """What identifies a backend object's version for the cache: its ETag, and what a
    replacement that keeps the bytes (an in-place copy with new metadata: same ETag) changes
    in what GET sends: Last-Modified, Content-Type, user metadata, stored headers."""
    meta = info.meta
    return (info.etag, info.last_modified, meta.content_type, tuple(sorted(meta.metadata.items())),
            tuple(sorted(meta.headers.items())))


class ReadCache:
    """See the module docstring."""

    def __init__(self, settings: CacheSettings, registry: CollectorRegistry) -> None:
        from .dual import DualCache
        from .resizer import AdaptiveResizer

        self.settings = settings
        self._invalidations = _Invalidations(INVALIDATIONS_KEPT)
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
        self.revalidations = Counter(
            "s3latent_cache_revalidations",
            "Backend HEADs checking a cache entry older than revalidate_after, by outcome: "
            "fresh (served), changed or gone (dropped, read again), error (request failed)",
            ["outcome"], registry=registry)
        for outcome in OUTCOMES:
            self.revalidations.labels(outcome)

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

    def invalidated_at(self, bucket: str, key: str) -> float:
        """When `key`'s entries were last dropped for a write or a change (monotonic)."""
        return self._invalidations.when((bucket, key))

    def _stale_fill(self, bucket: str, key: str, entry: Entry) -> bool:
        """Whether `entry` was read from the backend before the key's last invalidation."""
        return entry.confirmed <= self.invalidated_at(bucket, key)

    def put_latent(self, bucket: str, key: str, entry: Entry) -> None:
        """Keep a container; an image-tier entry of another source goes (never two truths)."""
        if self._stale_fill(bucket, key, entry):
            return
        other = self.dual.peek_image((bucket, key))
        if isinstance(other, Entry) and not _same(other, entry):
            self.dual.drop_image((bucket, key))
        self.dual.put_latent((bucket, key), entry)  # type: ignore[arg-type]

    def put_image(self, bucket: str, key: str, entry: Entry) -> None:
        """Keep an image; a latent-tier entry of another source goes."""
        if self._stale_fill(bucket, key, entry):
            return
        other = self.dual.peek_latent((bucket, key))
        if isinstance(other, Entry) and not _same(other, entry):
            self.dual.drop_latent((bucket, key))
        self.dual.put_image((bucket, key), entry)  # type: ignore[arg-type]

    # -- staleness -------------------------------------------------------------
    @property
    def revalidate_after(self) -> float:
        return self.settings.revalidate_after

    def due(self, entry: Entry, now: float | None = None) -> bool:
        """Whether `entry` must be checked against the backend before it is served."""
        now = time.monotonic() if now is None else now
        return now - entry.confirmed >= self.settings.revalidate_after

    def observed(self, bucket: str, key: str, current: ObjectInfo | None,
                 asked: float) -> None:
        """The backend said, to a call made at `asked`, that `key` is `current` (None: gone).

        Entries of both tiers from that object count as confirmed then; the others are
        dropped. Every HEAD of the key calls this, so HEAD and GET of one key on this node
        do not disagree.
        """
        ident = (bucket, key)
        for peek, drop in ((self.dual.peek_image, self.dual.drop_image),
                           (self.dual.peek_latent, self.dual.drop_latent)):
            entry = peek(ident)
            if not isinstance(entry, Entry):
                continue
            if entry.same_source(current):
                entry.confirmed = max(entry.confirmed, asked)
            else:
                drop(ident)
                self._invalidations.mark(ident)

    def count_revalidation(self, outcome: str) -> None:
        self.revalidations.labels(outcome).inc()

    def should_promote(self, bucket: str, key: str) -> bool:
        return self.dual.should_promote((bucket, key))

    def cacheable_plain(self, info: ObjectInfo) -> bool:
        return info.size <= PLAIN_CACHE_MAX and info.meta.content_type.startswith("image/")

    def invalidate(self, bucket: str, key: str) -> None:
        self._invalidations.mark((bucket, key))
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


def _same(a: Entry, b: Entry) -> bool:
    return bool(a.source) and a.source == b.source


class _Invalidations(LRUCache[tuple[str, str], float]):
    """(bucket, key) -> monotonic time of its last invalidation, bounded.

    A key pushed out of the LRU raises the watermark to its time, so `when` never answers
    earlier than the truth: a fill of a forgotten key is, at worst, not kept.
    """

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize=maxsize)
        self.watermark = float("-inf")

    def popitem(self) -> tuple[tuple[str, str], float]:
        key, when = super().popitem()
        self.watermark = max(self.watermark, when)
        return key, when

    def mark(self, ident: tuple[str, str]) -> None:
        self[ident] = time.monotonic()

    def when(self, ident: tuple[str, str]) -> float:
        return self.get(ident, self.watermark)
