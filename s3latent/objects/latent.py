"""The latent-aware object layer: logical views of containers and stubs.

Reads of a container serve its canonical rendition; reads of a stub serve the
sidecar rebuilt from the container (same length; identical bytes with a
lossless codec). Writes keep both keys of a pair readable: before a container
with a live stub is overwritten or deleted, the sidecar is written back as a
real object.

Listings show logical sizes and ETags with a bounded number of backend calls
per page: the page itself (twice at most, to step over the hidden range), and
one listing of the view index (physical.view_index_key) for the page's "-1"
entries not cached in memory. Only entries the index lacks (containers written
before it existed, or by a conversion that crashed before indexing) cost a
HEAD, once: what a HEAD learns is written back to the index in the background.
The gateway's hidden keys (physical.HIDDEN_PREFIX) are never listed, read or
written by clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..backends.base import Backend, ListEntry, ListPage, ObjectBody, ObjectInfo, ObjectMeta
from ..cache.readpath import Entry, ReadCache
from ..config import Config
from ..errors import S3Error
from ..latent.container import ContainerError, ContainerHeader, unpack
from . import physical
from .conversion import Converter, looks_like_image
from .layer import ObjectLayer

if TYPE_CHECKING:
    from ..decode.services import DecodeServices

log = logging.getLogger(__name__)

LATENT_CONTENT_TYPE = "application/vnd.s3latent.latent+safetensors"
SAFETENSORS_TYPE = "application/octet-stream"
FORMAT_META = "s3latent-format"
_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"),
            "jpg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
LIST_HEAD_CONCURRENCY = 16
# Index listings per page before the rest falls back to HEADs (stale index entries
# or odd key orders can need a second one; never more).
MAX_INDEX_CALLS = 2
INDEX_REPAIR_CONCURRENCY = 4
MAX_PENDING_REPAIRS = 10_000
_RESERVED = ("Keys under .s3latent/ are reserved for the gateway's own records.")
_Shared = tuple[ObjectInfo, memoryview] | None  # what a cache miss hands to concurrent ones


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


def _slice(data: bytes, byte_range: tuple[int, int] | None) -> bytes | memoryview:
    if byte_range is None:
        return data
    return memoryview(data)[byte_range[0]:byte_range[1] + 1]


class LatentObjectLayer(ObjectLayer):
    """See the module docstring."""

    def __init__(self, backend: Backend, config: Config, decoding: DecodeServices, *,
                 registry: CollectorRegistry, background: bool = True,
                 cache: ReadCache | None = None) -> None:
        super().__init__(backend)
        self._background = background
        self.cache = cache
        self.config = config
        self.decoding = decoding
        self.converter = Converter(backend, config, decoding, registry=registry)
        # (bucket, key, physical etag) -> logical (size, etag, last_modified)
        self._views: LRUCache[tuple[str, str, str], physical.LogicalView | None] = \
            LRUCache(maxsize=200_000)
        self.list_backend_calls = Counter(
            "s3latent_list_backend_calls",
            "Backend calls made to answer listings (list: the page, index: the view index, "
            "head: entries the index lacked, index_write: index repairs, in the background)",
            ["kind"], registry=registry)
        self.list_pages = Counter("s3latent_list_pages", "Listing pages answered",
                                  registry=registry)
        # (bucket, key) -> image ETag whose refusal marker was looked for (HEAD state)
        self._state_checked: LRUCache[tuple[str, str], str] = LRUCache(maxsize=200_000)
        self._repairs: set[tuple[str, str, str]] = set()
        self._repair_tasks: set[asyncio.Task[None]] = set()
        self._repair_limit = asyncio.Semaphore(INDEX_REPAIR_CONCURRENCY)
        self.corrupt = Counter("s3latent_corrupt_containers", "Containers that failed to read",
                               registry=registry)
        self.read_latency = Histogram(
            "s3latent_read_seconds", "Read latency by path", ["path"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        # (bucket, key) -> the whole-object cache miss under way: later misses wait for it
        # instead of fetching (and decoding) again; None means "not shareable, fetch yourself"
        self._misses: dict[tuple[str, str], asyncio.Future[_Shared]] = {}
        self.shared_misses = Counter("s3latent_read_shared_misses",
                                     "Cache misses answered by another miss's fetch",
                                     registry=registry)

    async def start(self) -> None:
        if self._background:
            await self.converter.start()

    async def close(self) -> None:
        for task in list(self._repair_tasks):
            task.cancel()
        await asyncio.gather(*self._repair_tasks, return_exceptions=True)
        await self.converter.close()
        await self.decoding.close()

    def state(self, bucket: str, key: str) -> str | None:
        return self.converter.states.get((bucket, key))

    # -- reads -------------------------------------------------------------
    async def head(self, bucket: str, key: str) -> ObjectInfo:
        _readable(key)
        info = await self._trusted(bucket, await self.backend.head_object(bucket, key))
        await self._refusal_state(bucket, key, info)
        return physical.logical_info(info)

    async def _trusted(self, bucket: str, info: ObjectInfo) -> ObjectInfo:
        """`info` with its latent claim only if the bytes back it (physical.verified).

        The verdict is remembered per physical ETag with the logical view (listings
        share it), so a container or stub is checked once, not on every request.
        """
        ident = (bucket, info.key, info.etag)
        if physical.representation(info) == "plain":
            if physical.may_be_latent(info.etag):
                self._views[ident] = None  # listings need not HEAD it again
            return physical.as_plain(info) if info.meta.internal.get(physical.REP) else info
        if ident in self._views:
            return info if self._views[ident] is not None else physical.as_plain(info)
        trusted = await physical.verified(self.backend, bucket, info)
        self._views[ident] = physical.logical_view(trusted)
        return trusted

    async def _refusal_state(self, bucket: str, key: str, info: ObjectInfo) -> None:
        """Make x-s3latent-state say why a plain image stayed plain, after restarts too.

        Costs nothing for images without a refusal marker (the bucket's markers
        are listed once); one GET and one HEAD of the sidecar, once per image
        version, for those with one.
        """
        # `info` is trusted, physical or logical (an image cache hit): a logical ETag has
        # no "-1", so ask the (verified) metadata, not representation().
        if info.meta.internal.get(physical.REP) in (physical.REP_LATENT, physical.REP_STUB):
            return
        conv = self.converter
        state = conv.states.get((bucket, key))
        if state is not None:
            if not state.startswith("refused") or conv.refusal_for(bucket, key, info.etag):
                return
            conv.forget_refusal(bucket, key)  # the image was replaced behind our back
        if self._state_checked.get((bucket, key)) == info.etag:
            return
        settings = self.config.bucket(bucket)
        if not settings.convert or not looks_like_image(key, info.meta.content_type):
            return
        self._state_checked[(bucket, key)] = info.etag
        try:
            if key not in await conv.refusals.known(bucket):
                return
            refusal = await conv.refusals.read(bucket, key)
            if refusal is None or refusal.image_etag != info.etag:
                return
            side = await self._head_or_none(bucket, key + settings.sidecar_suffix)
        except S3Error as exc:
            log.warning("refusal of %s/%s not looked up: %s", bucket, key, exc)
            self._state_checked.pop((bucket, key), None)
            return
        if side is not None and refusal.matches(info.etag, side.etag, conv.fingerprint(bucket)):
            conv.note_refused(bucket, key, refusal)

    async def get(self, bucket: str, key: str, byte_range: tuple[int, int] | None = None
                  ) -> tuple[ObjectInfo, ObjectBody]:
        _readable(key)
        started = time.perf_counter()
        cache = self.cache
        if cache is not None:
            hit = cache.image(bucket, key)
            if hit is not None:
                self._record(bucket, key, "image_hit", started, hit, None)
                await self._refusal_state(bucket, key, hit.info)
                return hit.info, BytesBody(_slice(hit.data, byte_range))
            warm = cache.latent(bucket, key)
            if warm is not None:
                renderer = (await self.decoding.ready()).renderer
                data, _ = await renderer.rendition(bucket, key, warm.physical_etag,
                                                        warm.data, self._unpacker(bucket, key))
                logical = self._checked(bucket, key, warm.info, data)
                image = Entry(logical, data)
                if cache.should_promote(bucket, key):
                    cache.put_image(bucket, key, image)
                self._record(bucket, key, "latent_hit", started, image, warm)
                return logical, BytesBody(_slice(data, byte_range))
            if byte_range is None:
                return await self._shared_miss(bucket, key, started)
        return await self._miss(bucket, key, byte_range, started)

    async def _shared_miss(self, bucket: str, key: str, started: float
                           ) -> tuple[ObjectInfo, ObjectBody]:
        """One backend fetch and one decode for concurrent misses on a key."""
        ident = (bucket, key)
        pending = self._misses.get(ident)
        if pending is not None:
            shared = await asyncio.shield(pending)
            if shared is not None:
                self.shared_misses.inc()
                self.read_latency.labels("miss").observe(time.perf_counter() - started)
                return shared[0], BytesBody(shared[1])
            return await self._miss(bucket, key, None, started)
        future: asyncio.Future[_Shared] = \
            asyncio.get_running_loop().create_future()
        self._misses[ident] = future
        try:
            info, body = await self._miss(bucket, key, None, started)
            future.set_result((info, body.data) if isinstance(body, BytesBody) else None)
            return info, body
        except asyncio.CancelledError:  # this client left; the others fetch for themselves
            future.set_result(None)
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody logs it as lost
            raise
        finally:
            del self._misses[ident]

    async def _miss(self, bucket: str, key: str, byte_range: tuple[int, int] | None,
                    started: float) -> tuple[ObjectInfo, ObjectBody]:
        cache = self.cache
        info, body = await self.backend.get_object(bucket, key, byte_range)
        try:
            info = await self._trusted(bucket, info)
        except BaseException:
            await body.close()
            raise
        rep = physical.representation(info)
        if rep == "plain":
            try:
                await self._refusal_state(bucket, key, info)
            except BaseException:
                await body.close()
                raise
            if cache is None or byte_range is not None or not cache.cacheable_plain(info):
                return info, body
            try:
                data = b"".join([chunk async for chunk in body])
            finally:
                await body.close()
            entry = Entry(info, data)
            cache.put_image(bucket, key, entry)
            self._record(bucket, key, "plain", started, entry, None)
            return info, BytesBody(data)
        if byte_range is not None:
            await body.close()
            info, body = await self.backend.get_object(bucket, key)
            try:
                info = await self._trusted(bucket, info)
            except BaseException:
                await body.close()
                raise
            rep = physical.representation(info)
            if rep == "plain":  # replaced meanwhile by a plain object: serve it as one
                return info, body
        try:
            raw = b"".join([chunk async for chunk in body])
        finally:
            await body.close()
        if rep != physical.REP_LATENT:
            data = await self._sidecar_bytes(bucket, info)
            self.read_latency.labels("sidecar").observe(time.perf_counter() - started)
            return self._checked(bucket, key, info, data), BytesBody(_slice(data, byte_range))
        container = Entry(physical.logical_info(info), raw, info.etag)
        renderer = (await self.decoding.ready()).renderer
        data, _ = await renderer.rendition(bucket, key, info.etag, raw,
                                                self._unpacker(bucket, key))
        logical = self._checked(bucket, key, info, data)
        if cache is not None:
            cache.put_latent(bucket, key, container)
        self._record(bucket, key, "miss", started, Entry(logical, data), container)
        return logical, BytesBody(_slice(data, byte_range))

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
        self.read_latency.labels(path).observe(elapsed)
        if self.cache is not None:
            self.cache.record(bucket, key, path, elapsed, len(image),
                              len(container) if container is not None else 0)

    async def _container(self, bucket: str, key: str) -> tuple[ObjectInfo, ContainerHeader,
                                                               bytes]:
        info, body = await self.backend.get_object(bucket, key)
        try:
            raw = b"".join([chunk async for chunk in body])
        finally:
            await body.close()
        if physical.representation(await self._trusted(bucket, info)) != physical.REP_LATENT:
            raise S3Error("NoSuchKey", Key=key)
        header, payload = self.unpack(bucket, key, raw)
        if not physical.container_holds(info, header):
            log.error("container %s/%s does not match its own metadata", bucket, key)
            raise S3Error("InternalError", "The stored object is corrupt.")
        return info, header, payload

    def _unpacker(self, bucket: str, key: str) -> Any:
        return lambda raw: self.unpack(bucket, key, raw)

    def unpack(self, bucket: str, key: str, raw: bytes) -> tuple[ContainerHeader, bytes]:
        try:
            return unpack(raw)
        except ContainerError as exc:
            self.corrupt.inc()
            log.error("container %s/%s is unreadable: %s", bucket, key, exc)
            raise S3Error("InternalError", "The stored object is corrupt.") from exc

    async def _sidecar_bytes(self, bucket: str, stub: ObjectInfo) -> bytes:
        image_key = stub.meta.internal.get(physical.L_IMAGE, "")
        view = physical.logical_view(stub)
        try:
            _, header, payload = await self._container(bucket, image_key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                log.error("stub %s/%s points at %s, which is no container", bucket, stub.key,
                          image_key)
                raise S3Error("InternalError", "The sidecar's container is missing.") from exc
            raise
        if view is None or not physical.stub_holds(stub, image_key, header):
            raise S3Error("InternalError", "The sidecar's container does not match it.")
        return await asyncio.to_thread(physical.sidecar_file, header, payload)

    async def latent_safetensors(self, bucket: str, key: str) -> tuple[ObjectInfo, bytes]:
        """The latent of a latent object as a safetensors file (`?x-s3latent-want=latent`)."""
        _readable(key)
        info = await self._trusted(bucket, await self.backend.head_object(bucket, key))
        rep = physical.representation(info)
        if rep == physical.REP_STUB:
            data = await self._sidecar_bytes(bucket, info)
        elif rep == physical.REP_LATENT:
            info, header, payload = await self._container(bucket, key)
            data = await asyncio.to_thread(physical.sidecar_file, header, payload)
        else:
            raise S3Error("InvalidRequest", "This object is not stored as a latent.")
        logical = physical.logical_info(info)
        return ObjectInfo(key, len(data), hashlib.md5(data).hexdigest(), logical.last_modified,
                          ObjectMeta(content_type=SAFETENSORS_TYPE)), data

    async def list(self, bucket: str, *, prefix: str = "", delimiter: str | None = None,
                   start_after: str | None = None, max_keys: int = 1000) -> ListPage:
        page = await self._visible_page(bucket, prefix, delimiter, start_after, max_keys)
        self.list_pages.inc()
        need = {e.key: e for e in page.entries if physical.may_be_latent(e.etag)
                and (bucket, e.key, e.etag) not in self._views}
        if need:
            await self._views_from_index(bucket, prefix, delimiter,
                                         len(page.entries) + len(page.common_prefixes), need)
        if need:
            await self._views_by_head(bucket, need)
        for entry in page.entries:
            if physical.may_be_latent(entry.etag):
                view = self._views.get((bucket, entry.key, entry.etag))
                if view is not None:
                    entry.size, entry.etag, entry.last_modified = view.size, view.etag, \
                        view.last_modified
        return page

    async def _backend_list(self, bucket: str, prefix: str, delimiter: str | None,
                            start_after: str | None, max_keys: int) -> ListPage:
        self.list_backend_calls.labels("list").inc()
        return await self.backend.list_objects(bucket, prefix=prefix, delimiter=delimiter,
                                               start_after=start_after, max_keys=max_keys)

    async def _visible_page(self, bucket: str, prefix: str, delimiter: str | None,
                            start_after: str | None, max_keys: int) -> ListPage:
        """A backend page without the hidden range: one call, two when the hidden range
        was in it (the second starts past the whole range and fills the page)."""
        if physical.is_hidden(prefix):
            return ListPage([], [], False, None)
        page = await self._backend_list(bucket, prefix, delimiter, start_after, max_keys)
        if not physical.HIDDEN_PREFIX.startswith(prefix):
            return page  # the prefix excludes every hidden key
        entries = [e for e in page.entries if not physical.is_hidden(e.key)]
        prefixes = [p for p in page.common_prefixes if not physical.is_hidden(p)]
        for common in [p for p in prefixes if physical.HIDDEN_PREFIX.startswith(p)]:
            if not await self._holds_visible(bucket, common):
                prefixes.remove(common)  # e.g. "." with delimiter ".": only hidden keys
        if len(entries) + len(prefixes) == len(page.entries) + len(page.common_prefixes):
            return page
        truncated, last = page.is_truncated, page.next_start_after
        room = max_keys - len(entries) - len(prefixes)
        if truncated and last is not None and room > 0:
            after = physical.HIDDEN_END if physical.is_hidden(last) else last
            more = await self._backend_list(bucket, prefix, delimiter, after, room)
            entries += [e for e in more.entries if not physical.is_hidden(e.key)]
            prefixes += [p for p in more.common_prefixes if not physical.is_hidden(p)]
            truncated, last = more.is_truncated, more.next_start_after or last
        if not truncated:
            last = max([e.key for e in entries[-1:]] + prefixes[-1:], default=None)
        return ListPage(entries, prefixes, truncated, last)

    async def _holds_visible(self, bucket: str, common: str) -> bool:
        """Whether a common prefix above the hidden range holds any client key."""
        first = await self._backend_list(bucket, common, None, None, 1)
        if first.entries and not physical.is_hidden(first.entries[0].key):
            return True
        rest = await self._backend_list(bucket, common, None, physical.HIDDEN_END, 1)
        return bool(rest.entries)

    async def _views_from_index(self, bucket: str, prefix: str, delimiter: str | None,
                                items: int, need: dict[str, ListEntry]) -> None:
        """Resolve `need` (key -> "-1" entry) from the view index; found ones leave `need`.

        The index keys of a page's entries lie in one range of the index, in the
        same order (rolled up the same way by a delimiter that cannot occur in
        the encoded view), so one listing covers the page.
        """
        index_delimiter = delimiter
        if delimiter and set(delimiter) & physical.VIEW_KEY_CHARS:
            index_delimiter = None  # would cut index keys apart: list without it
        index_prefix = physical.VIEWS_PREFIX + prefix
        after: str | None = physical.VIEWS_PREFIX + min(need)
        end = physical.view_index_prefix(max(need)) + "\U0010ffff"
        budget = min(1000, 2 * items + 16) if index_delimiter == delimiter else 1000
        for _ in range(MAX_INDEX_CALLS):
            self.list_backend_calls.labels("index").inc()
            try:
                found = await self.backend.list_objects(
                    bucket, prefix=index_prefix, delimiter=index_delimiter, start_after=after,
                    max_keys=budget)
            except S3Error as exc:
                log.warning("listing index of %s not readable: %s", bucket, exc)
                return
            for index_entry in found.entries:
                parsed = physical.parse_view_index_key(index_entry.key)
                if parsed is None:
                    continue
                key, physical_etag, view = parsed
                entry = need.get(key)
                if entry is not None and entry.etag == physical_etag:
                    self._views[(bucket, key, physical_etag)] = view
                    del need[key]
            after = found.next_start_after
            if not need or not found.is_truncated or after is None or after > end:
                return

    async def _views_by_head(self, bucket: str, need: dict[str, ListEntry]) -> None:
        """HEAD what the index lacked (bounded concurrency) and index it for next time."""
        limiter = asyncio.Semaphore(LIST_HEAD_CONCURRENCY)

        async def resolve(entry: ListEntry) -> None:
            async with limiter:
                try:
                    info = await self.backend.head_object(bucket, entry.key)
                except S3Error as exc:
                    if exc.code == "NoSuchKey":
                        return
                    raise
            self.list_backend_calls.labels("head").inc()
            view = physical.logical_view(await self._trusted(bucket, info))
            if info.etag == entry.etag:  # else replaced meanwhile: shown as listed
                self._repair_index(bucket, entry.key, info.etag, view)

        await asyncio.gather(*(resolve(e) for e in need.values()))

    def _repair_index(self, bucket: str, key: str, physical_etag: str,
                      view: physical.LogicalView | None) -> None:
        """Write a missing index entry in the background (the listing does not wait)."""
        ident = (bucket, key, physical_etag)
        if ident in self._repairs or len(self._repairs) >= MAX_PENDING_REPAIRS:
            return
        self._repairs.add(ident)

        async def repair() -> None:
            try:
                async with self._repair_limit:
                    if await physical.write_view_index(self.backend, bucket, key,
                                                       physical_etag, view):
                        self.list_backend_calls.labels("index_write").inc()
            except S3Error as exc:
                log.info("listing index of %s/%s not repaired: %s", bucket, key, exc)
            finally:
                self._repairs.discard(ident)

        task = asyncio.get_running_loop().create_task(repair())
        self._repair_tasks.add(task)
        task.add_done_callback(self._repair_tasks.discard)

    async def settle(self) -> None:
        """Wait for background index repairs (tests, benchmarks)."""
        while self._repair_tasks:
            await asyncio.gather(*list(self._repair_tasks), return_exceptions=True)

    # -- writes ------------------------------------------------------------
    async def put(self, bucket: str, key: str, body: AsyncIterable[bytes], meta: ObjectMeta,
                  *, size: int | None = None, if_match: str | None = None,
                  if_none_match: str | None = None) -> ObjectInfo:
        _writable(key)
        settings = self.config.bucket(bucket)
        if meta.content_type.split(";")[0].strip().lower() == LATENT_CONTENT_TYPE:
            return await self._put_latent_only(bucket, key, body, meta, size=size,
                                               if_match=if_match, if_none_match=if_none_match)
        image_like = looks_like_image(key, meta.content_type)
        sidecar_like = settings.convert and key.endswith(settings.sidecar_suffix)
        current = None
        if if_match is not None or if_none_match is not None or image_like or sidecar_like:
            current = await self._head_or_none(bucket, key)
            if current is not None:
                _check_write_conditions(physical.logical_info(current), if_match, if_none_match)
                if physical.representation(current) == physical.REP_LATENT:
                    await self._materialize_sidecar(bucket, key, settings.sidecar_suffix)
            elif if_match is not None:
                raise S3Error("NoSuchKey", Key=key)
        info = await self.backend.put_object(bucket, key, body, meta, size=size)
        if current is not None:
            await self._unindex(bucket, current)
        if settings.convert:
            if key.endswith(settings.sidecar_suffix):
                self.converter.schedule(bucket, key[: -len(settings.sidecar_suffix)])
            elif image_like:
                self.converter.schedule(bucket, key)
        return info

    async def _head_or_none(self, bucket: str, key: str) -> ObjectInfo | None:
        """The object at `key` as trusted (`_trusted`), or None."""
        try:
            return await self._trusted(bucket, await self.backend.head_object(bucket, key))
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise

    async def _materialize_sidecar(self, bucket: str, image_key: str, suffix: str) -> None:
        """The container at image_key is going away: make its stub a real sidecar again."""
        side_key = image_key + suffix
        stub = await self._head_or_none(bucket, side_key)
        if stub is None or physical.representation(stub) != physical.REP_STUB or \
                stub.meta.internal.get(physical.L_IMAGE) != image_key:
            return
        data = await self._sidecar_bytes(bucket, stub)
        meta = ObjectMeta(content_type=stub.meta.content_type,
                          metadata=dict(stub.meta.metadata), headers=dict(stub.meta.headers),
                          tags=await self.backend.get_tags(bucket, side_key))

        async def once() -> AsyncIterator[bytes]:
            yield data

        try:
            await self.backend.put_object(bucket, side_key, once(), meta, size=len(data),
                                          if_match=stub.etag)
        except S3Error as exc:
            if exc.code != "PreconditionFailed":
                raise
            return
        await self._unindex(bucket, stub)

    async def _unindex(self, bucket: str, replaced: ObjectInfo) -> None:
        """`replaced` (a container, stub or plain "-1" object) was overwritten or deleted:
        drop its listing index entry (best effort; a stale entry is never used)."""
        try:
            await physical.drop_view_index(self.backend, bucket, replaced)
        except S3Error as exc:
            log.info("stale listing index entry of %s/%s left: %s", bucket, replaced.key, exc)

    async def _index(self, bucket: str, key: str, physical_etag: str,
                     view: physical.LogicalView) -> None:
        """A container was written at `key`: record its view for listings (best effort)."""
        self._views[(bucket, key, physical_etag)] = view
        try:
            await physical.write_view_index(self.backend, bucket, key, physical_etag, view)
        except S3Error as exc:
            log.info("listing index of %s/%s not written: %s", bucket, key, exc)

    async def delete(self, bucket: str, key: str) -> None:
        if physical.is_hidden(key):
            return  # not a client's object: deleting it "succeeds" like any missing key
        settings = self.config.bucket(bucket)
        current = await self._head_or_none(bucket, key)
        if current is not None and physical.representation(current) == physical.REP_LATENT:
            await self._materialize_sidecar(bucket, key, settings.sidecar_suffix)
        await self.backend.delete_object(bucket, key)
        if current is not None:
            await self._unindex(bucket, current)
        if settings.convert:
            await self._drop_refusal(bucket, key, settings.sidecar_suffix, current)

    async def _drop_refusal(self, bucket: str, key: str, suffix: str,
                            current: ObjectInfo | None) -> None:
        """One key of a refused pair was deleted: its refusal marker goes too."""
        if key.endswith(suffix):
            image_key = key[: -len(suffix)]
        elif looks_like_image(key, current.meta.content_type if current else None):
            image_key = key
        else:
            return
        self.converter.forget_refusal(bucket, image_key)
        try:
            if await self.converter.refusals.drop(bucket, image_key):
                self.converter.marker_ops.labels("delete").inc()
        except S3Error as exc:
            log.warning("refusal marker of %s/%s not deleted: %s", bucket, image_key, exc)

    async def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                   meta: ObjectMeta | None) -> ObjectInfo:
        _readable(src_key)
        _writable(dst_key)
        stored = await self.backend.head_object(src_bucket, src_key)
        source = await self._trusted(src_bucket, stored)
        rep = physical.representation(source)
        current = await self._head_or_none(dst_bucket, dst_key)
        if current is not None and physical.representation(current) == physical.REP_LATENT:
            await self._materialize_sidecar(dst_bucket, dst_key,
                                            self.config.bucket(dst_bucket).sidecar_suffix)
        if rep == "plain":
            if meta is None and stored.meta.internal:
                # The backend would copy the source's internal metadata (unverified
                # claims, written around the gateway): the copy gets the client's part only.
                meta = ObjectMeta(content_type=stored.meta.content_type,
                                  metadata=dict(stored.meta.metadata),
                                  headers=dict(stored.meta.headers),
                                  tags=await self.backend.get_tags(src_bucket, src_key),
                                  checksums=dict(source.meta.checksums))
            copied = await self.backend.copy_object(src_bucket, src_key, dst_bucket, dst_key,
                                                    meta)
            if current is not None:
                await self._unindex(dst_bucket, current)
            return copied
        if rep == physical.REP_STUB:
            data = await self._sidecar_bytes(src_bucket, source)
            new_meta = meta or ObjectMeta(
                content_type=source.meta.content_type, metadata=dict(source.meta.metadata),
                headers=dict(source.meta.headers),
                tags=await self.backend.get_tags(src_bucket, src_key))

            async def once() -> AsyncIterator[bytes]:
                yield data

            copied = await self.backend.put_object(dst_bucket, dst_key, once(), new_meta,
                                                   size=len(data))
            if current is not None:
                await self._unindex(dst_bucket, current)
            return copied
        # A container stays a container: the copy is latent too.
        info, body = await self.backend.get_object(src_bucket, src_key)
        try:
            raw = b"".join([chunk async for chunk in body])
        finally:
            await body.close()
        view = physical.logical_view(info)
        assert view is not None
        now = datetime.now(UTC)
        internal = physical.mirror(physical.REP_LATENT, view.size, view.etag, now,
                                   **physical.storage_of(info.meta.internal))
        if meta is None:
            new_meta = ObjectMeta(content_type=info.meta.content_type,
                                  metadata=dict(info.meta.metadata),
                                  headers=dict(info.meta.headers),
                                  tags=await self.backend.get_tags(src_bucket, src_key),
                                  internal=internal)
        else:
            new_meta = ObjectMeta(content_type=meta.content_type, metadata=meta.metadata,
                                  headers=meta.headers, tags=meta.tags, internal=internal)
        written = await physical.write_single_part(self.backend, dst_bucket, dst_key, raw,
                                                   new_meta)
        if current is not None:
            await self._unindex(dst_bucket, current)
        await self._index(dst_bucket, dst_key, written.etag,
                          physical.LogicalView(view.size, view.etag, now))
        return ObjectInfo(dst_key, view.size, view.etag, now, new_meta)

    async def _put_latent_only(self, bucket: str, key: str, body: AsyncIterable[bytes],
                               meta: ObjectMeta, *, size: int | None, if_match: str | None,
                               if_none_match: str | None) -> ObjectInfo:
        limit = 64 * 1024 * 1024
        if size is not None and size > limit:
            raise S3Error("EntityTooLarge", "A latent upload may be at most 64 MiB.")
        chunks, total = [], 0
        async for chunk in body:
            total += len(chunk)
            if total > limit:
                raise S3Error("EntityTooLarge", "A latent upload may be at most 64 MiB.")
            chunks.append(chunk)
        data = b"".join(chunks)
        await self.decoding.ready()
        from ..latent.sidecar import SidecarError, check_channels, parse_sidecar
        from ..models.registry import ModelUnavailable, UnknownModel

        try:
            sidecar = await asyncio.to_thread(parse_sidecar, data)
        except SidecarError as exc:
            raise S3Error("InvalidArgument", f"Invalid latent upload: {exc}") from exc
        model_id = sidecar.model or meta.metadata.get(physical.MODEL_META)
        if not model_id:
            raise S3Error("InvalidArgument", "Invalid latent upload: name the model in the "
                          "safetensors metadata 'model' or in x-amz-meta-s3latent-model.")
        wanted = meta.metadata.get(FORMAT_META, "png").lower()
        if wanted not in _FORMATS:
            raise S3Error("InvalidArgument", f"Invalid latent upload: x-amz-meta-{FORMAT_META} "
                          f"must be one of png, jpeg, webp (got {wanted!r}).")
        fmt, content_type = _FORMATS[wanted]
        try:
            spec = self.decoding.models.spec(model_id)
            check_channels(sidecar, spec.latent_channels)
        except UnknownModel as exc:
            raise S3Error("InvalidArgument", f"Invalid latent upload: {exc}") from exc
        except SidecarError as exc:
            raise S3Error("InvalidArgument", f"Invalid latent upload: {exc}") from exc
        too_large = self.decoding.over_pixel_ceiling(model_id, sidecar.latent.shape)
        if too_large:  # refused before any decode: its memory and time are what is bounded
            raise S3Error("InvalidArgument", f"Invalid latent upload: {too_large}.")
        settings = self.config.bucket(bucket)
        try:
            admission = await self.converter.admitter().admit_latent_only(
                settings, sidecar, model_id, fmt, content_type, meta)
        except ModelUnavailable as exc:
            raise S3Error("ServiceUnavailable", f"The model {model_id} is unavailable: "
                          f"{exc}") from exc
        current = await self._head_or_none(bucket, key)
        if current is not None:
            _check_write_conditions(physical.logical_info(current), if_match, if_none_match)
            if physical.representation(current) == physical.REP_LATENT:
                await self._materialize_sidecar(bucket, key, settings.sidecar_suffix)
        elif if_match is not None:
            raise S3Error("NoSuchKey", Key=key)
        now = datetime.now(UTC)
        user_meta = {k: v for k, v in meta.metadata.items() if k not in (FORMAT_META,)}
        header = admission.header
        new_meta = ObjectMeta(content_type=content_type, metadata=user_meta,
                              headers=meta.headers, tags=meta.tags,
                              internal=physical.mirror(
                                  physical.REP_LATENT, header.size, header.etag, now,
                                  **physical.storage_mirror(header.codec, header.model,
                                                            header.psnr)))
        written = await physical.write_single_part(self.backend, bucket, key,
                                                   admission.container, new_meta)
        if current is not None:
            await self._unindex(bucket, current)
        await self._index(bucket, key, written.etag,
                          physical.LogicalView(header.size, header.etag, now))
        return ObjectInfo(key, admission.header.size, admission.header.etag,
                          now, new_meta)

    async def before_overwrite(self, bucket: str, key: str) -> ObjectInfo | None:
        """A converted image's stub becomes its sidecar again, as for a PUT."""
        current = await self._head_or_none(bucket, key)
        if current is not None and physical.representation(current) == physical.REP_LATENT:
            await self._materialize_sidecar(bucket, key,
                                            self.config.bucket(bucket).sidecar_suffix)
        return current

    async def after_overwrite(self, bucket: str, key: str, replaced: ObjectInfo | None) -> None:
        self.invalidate(bucket, key)
        if replaced is not None:
            await self._unindex(bucket, replaced)
        settings = self.config.bucket(bucket)
        if settings.convert and not physical.is_hidden(key):
            if key.endswith(settings.sidecar_suffix):
                self.converter.schedule(bucket, key[: -len(settings.sidecar_suffix)])
            elif looks_like_image(key, None):
                self.converter.schedule(bucket, key)

    async def delete_bucket(self, bucket: str) -> None:
        """The gateway's hidden records go with the bucket once no client key is left."""
        first = await self.backend.list_objects(bucket, max_keys=1)
        if first.entries and not physical.is_hidden(first.entries[0].key):
            raise S3Error("BucketNotEmpty", BucketName=bucket)
        if first.entries:  # the hidden range comes first; is anything listed after it?
            after = await self.backend.list_objects(bucket, start_after=physical.HIDDEN_END,
                                                    max_keys=1)
            if after.entries:
                raise S3Error("BucketNotEmpty", BucketName=bucket)
        while True:
            page = await self.backend.list_objects(bucket, prefix=physical.HIDDEN_PREFIX)
            for entry in page.entries:
                await self.backend.delete_object(bucket, entry.key)
            if not page.is_truncated:
                break
        await self.backend.delete_bucket(bucket)

    def invalidate(self, bucket: str, key: str) -> None:
        if self.cache is not None:
            self.cache.invalidate(bucket, key)
        # A write of either key of a pair: an old refusal no longer describes it.
        self._state_checked.pop((bucket, key), None)
        suffix = self.config.bucket(bucket).sidecar_suffix
        image_key = key[: -len(suffix)] if key.endswith(suffix) else key
        self._state_checked.pop((bucket, image_key), None)
        self.converter.forget_refusal(bucket, image_key)


def _readable(key: str) -> None:
    """Hidden keys do not exist for clients."""
    if physical.is_hidden(key):
        raise S3Error("NoSuchKey", Key=key)


def _writable(key: str) -> None:
    """Clients cannot write the gateway's own records."""
    if physical.is_hidden(key):
        raise S3Error("InvalidArgument", _RESERVED, ArgumentName="key", ArgumentValue=key)


def _check_write_conditions(current: ObjectInfo, if_match: str | None,
                            if_none_match: str | None) -> None:
    if if_none_match is not None and if_none_match.strip() == "*":
        raise S3Error("PreconditionFailed", Condition="If-None-Match")
    if if_match is not None and if_match.strip('"') not in (current.etag, "*"):
        raise S3Error("PreconditionFailed", Condition="If-Match")

