"""Reads of latent objects: the cache tiers, shared misses and renditions.

A GET of a container serves its canonical rendition: from the image tier, rendered from the
latent tier, or fetched and rendered on a miss (concurrent misses of a key share one fetch,
concurrent renditions of a stored object share one decode). A GET of a stub serves the sidecar
rebuilt from its image's container. Whatever is sent, its length and ETag are those of the
bytes (`_checked`). HEAD answers from the backend's metadata, never the body, and says why a
plain image stayed plain (x-s3latent-state) even after a restart.

Staleness is bounded (cache/readpath.py): a cache entry last confirmed more than
`[cache] revalidate_after` ago is checked with one backend HEAD (shared by concurrent hits of
the key) before it is served, and every HEAD of a key reconciles its cache entries with what
the backend said, so HEAD and GET of one key on one node agree.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator

from cachetools import LRUCache
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..backends.base import ObjectBody, ObjectInfo, ObjectMeta, read_body
from ..cache.readpath import Entry
from ..errors import S3Error
from ..latent.container import ContainerError
from ..singleflight import SingleFlight
from . import physical
from .context import LatentContext, readable
from .conversion import looks_like_image

log = logging.getLogger(__name__)

SAFETENSORS_TYPE = "application/octet-stream"
_Shared = tuple[ObjectInfo, memoryview] | None  # what a cache miss hands to concurrent ones
_GONE = ("NoSuchKey", "NoSuchBucket")


class BytesBody:
    """An in-memory body with the ObjectBody interface."""

    def __init__(self, data: bytes | memoryview, chunk: int = 256 * 1024) -> None:
        self._data = memoryview(data)
        self._chunk = chunk

    @property
    def data(self) -> memoryview:
        """All of it (a view: sharing it with another reader copies nothing)."""
        return self._data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self._data), self._chunk):
            yield bytes(self._data[i:i + self._chunk])

    async def close(self) -> None:
        self._data = memoryview(b"")


def _slice(data: bytes | memoryview, byte_range: tuple[int, int] | None) -> bytes | memoryview:
    if byte_range is None:
        return data
    return memoryview(data)[byte_range[0]:byte_range[1] + 1]


def _held_as_latent(info: ObjectInfo | None) -> bool:
    """Whether a (trusted) HEAD said the object is a container or stub."""
    return info is not None and \
        info.meta.internal.get(physical.REP) in (physical.REP_LATENT, physical.REP_STUB)


class LatentReads:
    """See the module docstring."""

    def __init__(self, ctx: LatentContext, *, registry: CollectorRegistry) -> None:
        self.ctx = ctx
        # (bucket, key) -> image ETag whose refusal marker was looked for (HEAD state)
        self._state_checked: LRUCache[tuple[str, str], str] = LRUCache(maxsize=200_000)
        # The one read-latency histogram (the read cache's resizer gets the same samples).
        self.latency = Histogram(
            "s3latent_read_seconds", "GET latency by path (image_hit, latent_hit, miss, "
            "shared_miss, plain, sidecar)", ["path"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                     5, 10))
        # Whole-object cache misses under way: later misses wait for the first one's fetch
        # (and decode); a result of None means "not shareable, fetch yourself".
        self._misses: SingleFlight[tuple[str, str, float], _Shared] = SingleFlight()
        self.shared_misses = Counter("s3latent_read_shared_misses",
                                     "Cache misses answered by another miss's fetch",
                                     registry=registry)
        # Revalidations under way: concurrent hits of a key due for one share its HEAD
        # (None: the object is gone).
        self._revalidations: SingleFlight[tuple[str, str], ObjectInfo | None] = SingleFlight()

    # -- HEAD ------------------------------------------------------------------
    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        readable(key)
        ctx = self.ctx
        info = await ctx.trusted(bucket, await self._head(bucket, key))
        await self.refusal_state(bucket, key, info)
        return physical.logical_info(info)

    async def _head(self, bucket: str, key: str) -> ObjectInfo:
        """The backend's HEAD of `key`; the cache learns from it (confirm or drop entries)."""
        cache, asked = self.ctx.cache, time.monotonic()
        try:
            info = await self.ctx.backend.head_object(bucket, key)
        except S3Error as exc:
            if cache is not None and exc.code in _GONE:
                cache.observed(bucket, key, None, asked)
            raise
        if cache is not None:
            cache.observed(bucket, key, info, asked)
        return info

    async def refusal_state(self, bucket: str, key: str, info: ObjectInfo) -> None:
        """Make x-s3latent-state say why a plain image stayed plain, after restarts too.

        Costs nothing for images without a refusal marker (the bucket's markers
        are listed once); one GET and one HEAD of the sidecar, once per image
        version, for those with one.
        """
        # `info` is trusted, physical or logical (an image cache hit): a logical ETag has
        # no "-1", so ask the (verified) metadata, not representation().
        if _held_as_latent(info):
            return
        conv = self.ctx.converter
        state = conv.states.get((bucket, key))
        if state is not None:
            if not state.startswith("refused") or conv.refusal_for(bucket, key, info.etag):
                return
            conv.forget_refusal(bucket, key)  # the image was replaced behind our back
        if self._state_checked.get((bucket, key)) == info.etag:
            return
        settings = self.ctx.config.bucket(bucket)
        if not settings.convert or not looks_like_image(key, info.meta.content_type):
            return
        self._state_checked[(bucket, key)] = info.etag
        try:
            if key not in await conv.refusals.known(bucket):
                return
            refusal = await conv.refusals.read(bucket, key)
            if refusal is None or refusal.image_etag != info.etag:
                return
            side = await self.ctx.head_or_none(bucket, key + settings.sidecar_suffix)
        except S3Error as exc:
            log.warning("refusal of %s/%s not looked up: %s", bucket, key, exc)
            self._state_checked.pop((bucket, key), None)
            return
        if side is not None and refusal.matches(info.etag, side.etag, conv.fingerprint(bucket)):
            conv.note_refused(bucket, key, refusal)

    def forget_state(self, bucket: str, key: str) -> None:
        """A write of `key`: its refusal state is looked up again on the next HEAD."""
        self._state_checked.pop((bucket, key), None)

    # -- GET -------------------------------------------------------------------
    async def get_object(self, bucket: str, key: str,
                         byte_range: tuple[int, int] | None = None, *,
                         known: ObjectInfo | None = None) -> tuple[ObjectInfo, ObjectBody]:
        """Info and body; `known`, a HEAD's answer, saves a ranged read of a latent object."""
        readable(key)
        started = time.perf_counter()
        cache = self.ctx.cache
        if cache is not None:
            hit = cache.image(bucket, key)
            if hit is not None and await self._current(bucket, key, hit):
                self._record(bucket, key, "image_hit", started, hit, None)
                await self.refusal_state(bucket, key, hit.info)
                return hit.info, BytesBody(_slice(hit.data, byte_range))
            warm = cache.latent(bucket, key)
            if warm is not None and await self._current(bucket, key, warm):
                data = await self._render(bucket, key, warm.physical_etag, warm.data)
                logical = self._checked(bucket, key, warm.info, data)
                image = warm.derived(logical, data)
                if cache.should_promote(bucket, key):
                    cache.put_image(bucket, key, image)
                self._record(bucket, key, "latent_hit", started, image, warm)
                return logical, BytesBody(_slice(data, byte_range))
            if byte_range is None or _held_as_latent(known):
                # A range of a latent object is cut from its whole rendition: fetch it whole
                # (and cache it) at once rather than a range that is thrown away.
                info, body = await self._shared_miss(bucket, key, started)
                if byte_range is None:
                    return info, body
                if isinstance(body, BytesBody):
                    return info, BytesBody(_slice(body.data, byte_range))
                await body.close()  # replaced by a plain object meanwhile: read its range
        elif _held_as_latent(known) and byte_range is not None:
            info, body = await self._miss(bucket, key, None, started)
            if isinstance(body, BytesBody):
                return info, BytesBody(_slice(body.data, byte_range))
            await body.close()
        return await self._miss(bucket, key, byte_range, started)

    async def _current(self, bucket: str, key: str, entry: Entry) -> bool:
        """Whether a cache entry may be served: confirmed within revalidate_after, or the
        backend still holds the object it came from (one HEAD, shared by concurrent hits).

        A changed or missing object drops the key's entries (the read goes on as a miss).
        A backend failure fails the read as a miss would: serving the entry anyway could
        exceed the staleness bound while the backend is unreachable.
        """
        cache = self.ctx.cache
        assert cache is not None
        if not cache.due(entry):
            return True

        async def revalidate() -> ObjectInfo | None:
            try:
                current: ObjectInfo | None = await self._head(bucket, key)
            except S3Error as exc:
                if exc.code not in _GONE:
                    cache.count_revalidation("error")
                    raise
                current = None
            except Exception:
                cache.count_revalidation("error")
                raise
            cache.count_revalidation("gone" if current is None else
                                     "fresh" if entry.same_source(current) else "changed")
            return current

        current, _ = await self._revalidations.run((bucket, key), revalidate)
        return entry.same_source(current)

    async def _shared_miss(self, bucket: str, key: str, started: float
                           ) -> tuple[ObjectInfo, ObjectBody]:
        """One backend fetch and one decode for concurrent misses on a key."""
        own: list[tuple[ObjectInfo, ObjectBody]] = []

        async def fetch() -> _Shared:
            info, body = await self._miss(bucket, key, None, started)
            own.append((info, body))
            return (info, body.data) if isinstance(body, BytesBody) else None

        # A GET that arrives after a write of the key never joins a fetch started before it.
        epoch = self.ctx.cache.invalidated_at(bucket, key) if self.ctx.cache else 0.0
        shared, from_another = await self._misses.run((bucket, key, epoch), fetch)
        if not from_another:
            return own[0]
        if shared is None:  # a streamed plain object: not shareable
            return await self._miss(bucket, key, None, started)
        self.shared_misses.inc()
        self.latency.labels("shared_miss").observe(time.perf_counter() - started)
        return shared[0], BytesBody(shared[1])

    async def _miss(self, bucket: str, key: str, byte_range: tuple[int, int] | None,
                    started: float) -> tuple[ObjectInfo, ObjectBody]:
        ctx, cache = self.ctx, self.ctx.cache
        asked = time.monotonic()  # what the backend sends is at least this fresh
        info, body = await ctx.backend.get_object(bucket, key, byte_range)
        try:
            claimed_stub = physical.representation(info) == physical.REP_STUB
            info = await ctx.trusted(bucket, info)
            if claimed_stub and physical.representation(info) == "plain":
                # A stub whose container is gone: most likely an overwrite of its image is
                # restoring the real sidecar right now. Read the key again rather than serve
                # the stub's own bytes as the sidecar.
                await body.close()
                info, body = await ctx.backend.get_object(bucket, key, byte_range)
                info = await ctx.trusted(bucket, info)
        except BaseException:
            await body.close()
            raise
        rep = physical.representation(info)
        if rep == "plain":
            try:
                await self.refusal_state(bucket, key, info)
            except BaseException:
                await body.close()
                raise
            if cache is None or byte_range is not None or not cache.cacheable_plain(info):
                return info, body
            data = await read_body(body)
            entry = Entry.of(info, data, info, asked)
            cache.put_image(bucket, key, entry)
            self._record(bucket, key, "plain", started, entry, None)
            return info, BytesBody(data)
        if byte_range is not None:  # nobody knew it was latent: the range is of no use
            await body.close()
            info, body = await ctx.backend.get_object(bucket, key)
            try:
                info = await ctx.trusted(bucket, info)
            except BaseException:
                await body.close()
                raise
            rep = physical.representation(info)
            if rep == "plain":  # replaced meanwhile by a plain object: serve it as one
                return info, body
        raw = await read_body(body)
        if rep != physical.REP_LATENT:
            data = await ctx.sidecar_bytes(bucket, info)
            self.latency.labels("sidecar").observe(time.perf_counter() - started)
            return self._checked(bucket, key, info, data), BytesBody(_slice(data, byte_range))
        container = Entry.of(physical.logical_info(info), raw, info, asked)
        data = await self._render(bucket, key, info.etag, raw)
        logical = self._checked(bucket, key, info, data)
        if cache is not None:
            cache.put_latent(bucket, key, container)
        self._record(bucket, key, "miss", started, container.derived(logical, data), container)
        return logical, BytesBody(_slice(data, byte_range))

    async def _render(self, bucket: str, key: str, physical_etag: str, raw: bytes) -> bytes:
        """The rendition of a stored container: from a less-loaded peer (spillover) or here.

        A peer's rendition is checked by `_checked` like a local one (renditions are
        deterministic per render profile, so it is byte-identical).
        """
        if self.ctx.offload is not None:
            spilled = await self.ctx.offload(bucket, key, physical_etag, raw)
            if spilled is not None:
                return spilled
        renderer = (await self.ctx.decoding.ready()).renderer
        try:
            data, _ = await renderer.rendition(bucket, key, physical_etag, raw)
        except ContainerError as exc:
            raise self.ctx.corrupted(bucket, key, exc) from exc
        return data

    def _checked(self, bucket: str, key: str, info: ObjectInfo, data: bytes) -> ObjectInfo:
        """The logical info to send with `data`: never a length or ETag that disagrees."""
        logical = physical.logical_info(info)
        md5_claim = "-" not in logical.etag  # a multipart-style ETag claims no MD5
        if len(data) != logical.size or \
                (md5_claim and hashlib.md5(data).hexdigest() != logical.etag):
            digest = hashlib.md5(data).hexdigest()
            log.warning("%s/%s rendered to %d bytes (md5 %s), header says %d (%s): render "
                        "profile changed?", bucket, key, len(data), digest, logical.size,
                        logical.etag)
            logical = ObjectInfo(logical.key, len(data), digest, logical.last_modified,
                                 logical.meta)
        return logical

    def _record(self, bucket: str, key: str, path: str, started: float, image: Entry,
                container: Entry | None) -> None:
        elapsed = time.perf_counter() - started
        self.latency.labels(path).observe(elapsed)
        if self.ctx.cache is not None:
            self.ctx.cache.record(bucket, key, path, elapsed, len(image),
                                  len(container) if container is not None else 0)

    # -- the latent itself -----------------------------------------------------
    async def latent_safetensors(self, bucket: str, key: str) -> tuple[ObjectInfo, bytes]:
        """The latent of a latent object as a safetensors file (`?x-s3latent-want=latent`)."""
        readable(key)
        ctx = self.ctx
        info = await ctx.trusted(bucket, await self._head(bucket, key))
        rep = physical.representation(info)
        if rep == physical.REP_STUB:
            data = await ctx.sidecar_bytes(bucket, info)
        elif rep == physical.REP_LATENT:
            info, header, payload = await ctx.container(bucket, key)
            try:
                data = await asyncio.to_thread(physical.sidecar_file, header, payload)
            except physical.NoLatent as exc:  # a plain image stored as AVIF
                raise S3Error("InvalidRequest", "This object is not stored as a latent.") \
                    from exc
        else:
            raise S3Error("InvalidRequest", "This object is not stored as a latent.")
        logical = physical.logical_info(info)
        return ObjectInfo(key, len(data), hashlib.md5(data).hexdigest(), logical.last_modified,
                          ObjectMeta(content_type=SAFETENSORS_TYPE)), data
