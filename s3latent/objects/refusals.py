"""Durable conversion refusals: why an image + sidecar pair stays plain.

A refusal is decided once per exact pair (image ETag, sidecar ETag) under one
configuration (the bucket's codec/policy/threshold and the configured models,
as a fingerprint: change them and refused pairs are judged again) and kept
in a small hidden object `.s3latent/refused/<image key>` of the same bucket
(JSON: both ETags, the reason, when). Nothing a client reads changes: the image
and sidecar are not rewritten (a metadata-only rewrite, CopyObject onto
itself, keeps the ETag but moves Last-Modified on both backends), and listings
never show the hidden range.

The marker describes its pair, so it needs no invalidation to be correct: a
newer PUT of either key changes an ETag and the marker no longer applies (the
next conversion attempt overwrites or deletes it). Writes are atomic PUTs; a
crash before the write only costs one more attempt after restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from cachetools import LRUCache

from ..backends.base import Backend, ObjectMeta, read_body
from ..errors import S3Error
from . import physical

log = logging.getLogger(__name__)

MARKER_TYPE = "application/json"
LIST_PAGE = 1000


class Refused(Exception):
    """The pair stays plain; the message is the reason recorded for it.

    `durable=False` for conditions of this gateway rather than of the pair (a model
    that failed to load): remembered until restart, not recorded in the backend.
    """

    def __init__(self, reason: str, *, durable: bool = True) -> None:
        super().__init__(reason)
        self.durable = durable


@dataclass(frozen=True)
class Refusal:
    """A pair that was judged and refused; `reason` is what HEAD shows."""

    image_etag: str
    sidecar_etag: str
    reason: str
    settings: str  # fingerprint of what the pair was judged under
    at: str = ""

    def matches(self, image_etag: str, sidecar_etag: str, settings: str) -> bool:
        """Whether this refusal is about exactly these two objects, judged as we would."""
        return (self.image_etag == image_etag and self.sidecar_etag == sidecar_etag
                and self.settings == settings)


def marker_key(image_key: str) -> str:
    """The hidden key of the refusal marker of `image_key`."""
    return physical.REFUSALS_PREFIX + image_key


def encode(image_key: str, sidecar_key: str, refusal: Refusal) -> bytes:
    """The marker body: self-describing JSON, readable by a person browsing the bucket."""
    return json.dumps({"s3latent": "refusal", "version": 1, "image": image_key,
                       "image_etag": refusal.image_etag, "sidecar": sidecar_key,
                       "sidecar_etag": refusal.sidecar_etag, "reason": refusal.reason,
                       "settings": refusal.settings, "at": refusal.at},
                      ensure_ascii=False).encode() + b"\n"


def decode(data: bytes) -> Refusal | None:
    """The refusal in a marker body; None for anything else (treated as no marker)."""
    try:
        doc = json.loads(data)
        if doc.get("s3latent") != "refusal":
            return None
        return Refusal(str(doc["image_etag"]), str(doc["sidecar_etag"]), str(doc["reason"]),
                       str(doc.get("settings", "")), str(doc.get("at", "")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class RefusalStore:
    """Reads and writes refusal markers, remembering which image keys have one.

    `known(bucket)` lists the marker range of a bucket once (per process, and
    again at every sweep), so HEAD of an image without a marker costs no
    backend call; markers are read (GET) only for keys that have one, and
    cached by the marker's ETag.
    """

    def __init__(self, backend: Backend, *, max_cached: int = 100_000) -> None:
        self.backend = backend
        # bucket -> image keys with a marker (a superset: entries go when a read finds none)
        self._known: dict[str, set[str]] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        # (bucket, image key) -> (marker ETag, refusal)
        self._records: LRUCache[tuple[str, str], tuple[str, Refusal]] = \
            LRUCache(maxsize=max_cached)

    async def read(self, bucket: str, image_key: str) -> Refusal | None:
        """The marker of `image_key` as stored now (one GET), or None."""
        try:
            info, body = await self.backend.get_object(bucket, marker_key(image_key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                self.forget(bucket, image_key)
                return None
            raise
        data = await read_body(body)
        refusal = decode(data)
        if refusal is None:
            self.forget(bucket, image_key)
            return None
        self._remember(bucket, image_key, info.etag, refusal)
        return refusal

    async def write(self, bucket: str, image_key: str, sidecar_key: str,
                    refusal: Refusal) -> bool:
        """Store the marker; False if the backend would not take it (kept in memory only)."""
        data = encode(image_key, sidecar_key, refusal)
        try:
            info = await physical.put_small(self.backend, bucket, marker_key(image_key), data,
                                            ObjectMeta(content_type=MARKER_TYPE))
        except S3Error as exc:
            log.warning("refusal of %s/%s not persisted: %s", bucket, image_key, exc)
            return False
        self._remember(bucket, image_key, info.etag, refusal)
        return True

    async def drop(self, bucket: str, image_key: str) -> bool:
        """Delete the marker of `image_key` if one is known; whether one was."""
        known = await self.known(bucket)
        if image_key not in known:
            return False
        await self.delete(bucket, image_key)
        return True

    async def delete(self, bucket: str, image_key: str) -> None:
        """Delete the marker of `image_key` (idempotent)."""
        await self.backend.delete_object(bucket, marker_key(image_key))
        self.forget(bucket, image_key)

    async def known(self, bucket: str) -> set[str]:
        """Image keys of `bucket` with a marker (listed on first use)."""
        keys = self._known.get(bucket)
        if keys is not None:
            return keys
        lock = self._loading.setdefault(bucket, asyncio.Lock())
        async with lock:
            if bucket not in self._known:
                await self.scan(bucket)
        return self._known.get(bucket, set())

    async def scan(self, bucket: str) -> dict[str, tuple[str, Refusal | None]]:
        """Every marker of `bucket`: image key -> (marker ETag, refusal if cached).

        One listing call per 1000 markers; bodies are not read here (the sweeper
        reads those it needs with `cached_or_read`).
        """
        found: dict[str, tuple[str, Refusal | None]] = {}
        start: str | None = None
        while True:
            try:
                page = await self.backend.list_objects(bucket, prefix=physical.REFUSALS_PREFIX,
                                                       start_after=start, max_keys=LIST_PAGE)
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    break
                raise
            for entry in page.entries:
                image_key = entry.key[len(physical.REFUSALS_PREFIX):]
                record = self._records.get((bucket, image_key))
                found[image_key] = (entry.etag, record[1] if record and record[0] == entry.etag
                                    else None)
            if not page.is_truncated or page.next_start_after is None:
                break
            start = page.next_start_after
        # Merge rather than replace: a marker written while we listed stays known.
        self._known.setdefault(bucket, set()).update(found)
        return found

    async def cached_or_read(self, bucket: str, image_key: str, marker_etag: str
                             ) -> Refusal | None:
        """The refusal of a listed marker, read only if this ETag was not read before."""
        record = self._records.get((bucket, image_key))
        if record is not None and record[0] == marker_etag:
            return record[1]
        return await self.read(bucket, image_key)

    def _remember(self, bucket: str, image_key: str, etag: str, refusal: Refusal) -> None:
        self._records[(bucket, image_key)] = (etag, refusal)
        known = self._known.get(bucket)
        if known is not None:
            known.add(image_key)

    def forget(self, bucket: str, image_key: str) -> None:
        """The marker is gone (deleted, or found missing)."""
        self._records.pop((bucket, image_key), None)
        known = self._known.get(bucket)
        if known is not None:
            known.discard(image_key)

    def forget_bucket(self, bucket: str) -> None:
        """The bucket is gone."""
        self._known.pop(bucket, None)


def now_iso() -> str:
    """When a refusal was decided (for the marker; informational)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
