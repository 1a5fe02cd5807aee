"""The latent-aware store: logical objects over containers and stubs.

A thin facade over three parts that share one LatentContext: reads (objects.reads: cache
tiers, shared misses, renditions), listing (objects.listing: logical views at a bounded cost
per page) and writes (objects.writes: pairs, overwrites, copies, deletes). Operations that
latent objects do not change (buckets, tags, multipart parts) are forwarded by
ForwardingStore; so are the write hooks (invalidation before and after, write listeners).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from ..backends.base import (
    Backend,
    DeleteResult,
    ListPage,
    ObjectBody,
    ObjectInfo,
    ObjectLock,
    ObjectMeta,
    UploadChecksum,
    VersionEntry,
    VersionsPage,
    read_body,
)
from ..cache.readpath import ReadCache
from ..config import Config
from ..errors import S3Error
from . import encryption, physical
from .context import LatentContext, readable, writable
from .conversion import Converter, looks_like_image
from .lifecycle import LifecycleWorker
from .listing import LatentListing
from .reads import LatentReads
from .store import SSE_INDEX, ForwardingStore
from .versioned import VersionedObjects, VersioningStatus
from .writes import LATENT_CONTENT_TYPE, LatentWrites, refuse_encrypted_source

if TYPE_CHECKING:
    from ..decode.services import DecodeServices


class LatentStore(ForwardingStore):
    """See the module docstring."""

    def __init__(self, backend: Backend, config: Config, decoding: DecodeServices, *,
                 registry: CollectorRegistry, background: bool = True,
                 cache: ReadCache | None = None) -> None:
        super().__init__(backend)
        self.records.ttl = config.cache.revalidate_after
        self._background = background
        self.config = config
        self.decoding = decoding
        self.cache = cache
        self.converter = Converter(backend, config, decoding, registry=registry)
        # A conversion rewrites keys behind the clients' backs: it is a write like theirs.
        self.converter.on_written = self.changed
        self.ctx = LatentContext(backend, config, decoding, cache, self.converter,
                                 registry=registry)
        # ... and so is a stub the layer makes a real sidecar again (looked up at call time,
        # so a wrapped invalidate or changed sees these writes too).
        self.ctx.invalidate = lambda bucket, key: self.invalidate(bucket, key)
        self.ctx.changed = lambda bucket, key: self.changed(bucket, key)
        self.reads = LatentReads(self.ctx, registry=registry)
        self.listing = LatentListing(self.ctx, registry=registry)
        self.listing.sse_indexed = self._sse_indexed
        self.writes = LatentWrites(self.ctx)
        self.status = VersioningStatus(self.ctx)
        self.versioned = VersionedObjects(self.ctx, self.reads)
        self.lifecycle = LifecycleWorker(self, interval_s=config.lifecycle_interval_s,
                                         day_s=config.lifecycle_day_s)
        # Each sweep of a versioned bucket removes the keep copies no stub reads any more.
        self.converter.keep_sweeper = lambda bucket: self.versioned.sweep_keep_copies(
            bucket, self.converter.pair_lock)
        self.converter.standins = self.versioned.standins
        self.converter.keep_if_needed = self.versioned.keep_if_needed

    async def _versioned_access(self, bucket: str, version_id: str | None) -> bool:
        """Whether a request goes the versioned way; in a bucket never versioned only the
        `null` version exists, and any other ID is malformed there (as S3 answers)."""
        status = await self._status(bucket)
        if status is None and version_id not in (None, "null"):
            raise S3Error("InvalidArgument", "Invalid version id specified",
                          ArgumentName="versionId", ArgumentValue=version_id)
        return status is not None or version_id is not None

    async def _status(self, bucket: str) -> str | None:
        """The bucket's versioning status; None: never versioned (or no such bucket, which
        the operation itself then reports)."""
        try:
            return await self.status.get(bucket)
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return None
            raise

    async def start(self) -> None:
        await super().start()
        if self._background:
            await self.converter.start()
            self.lifecycle.start()

    async def close(self) -> None:
        await self.lifecycle.close()
        await self.listing.close()
        await self.converter.close()
        await self.decoding.close()
        await super().close()

    async def settle(self) -> None:
        """Wait for background listing-index repairs (tests, benchmarks)."""
        await self.listing.settle()

    def state(self, bucket: str, key: str) -> str | None:
        return self.converter.states.get((bucket, key))

    def invalidate(self, bucket: str, key: str) -> None:
        if self.cache is not None:
            self.cache.invalidate(bucket, key)
        # A write of either key of a pair: an old refusal no longer describes it.
        self.reads.forget_state(bucket, key)
        suffix = self.config.bucket(bucket).sidecar_suffix
        image_key = key[: -len(suffix)] if key.endswith(suffix) else key
        self.reads.forget_state(bucket, image_key)
        self.converter.forget_refusal(bucket, image_key)

    # -- buckets: versioning ----------------------------------------------------
    async def create_bucket(self, bucket: str, owner: str | None = None, *,
                            object_lock: bool = False) -> None:
        self.status.forget(bucket)
        await super().create_bucket(bucket, owner, object_lock=object_lock)
        self.status.forget(bucket)

    async def put_bucket_versioning(self, bucket: str, status: str) -> None:
        """Conversions of the bucket in flight are waited for and held back meanwhile: one
        that started unversioned must not commit into a bucket that has just become
        versioned (its plain overwrite would add a version); later ones see the status and
        convert in place (Converter.in_place) or leave the bucket plain."""
        async with self.converter.gate.closed(bucket):
            await self.backend.put_bucket_versioning(bucket, status)
            self.status.set(bucket, status)

    async def list_object_versions(self, bucket: str, *, prefix: str = "",
                                   delimiter: str | None = None,
                                   key_marker: str | None = None,
                                   version_id_marker: str | None = None,
                                   max_keys: int = 1000) -> VersionsPage:
        """Versions as clients see them: a latent version shows the size, ETag and time
        its reads give.

        Which versions may be latent: a one-part multipart ETag, or a key the listing
        index knows as converted (SeaweedFS lists multipart versions without the "-1").
        One index listing per page; a version whose (key, physical ETag) the index holds
        takes its view from there (the same bytes, whichever version), any other such
        version costs one HEAD.
        """
        standins = self.versioned.standins
        if standins.supported:  # a stand-in's client version as the backend's marker
            version_id_marker = await standins.translate_marker(bucket, key_marker,
                                                                version_id_marker)
        page = await super().list_object_versions(
            bucket, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
            version_id_marker=version_id_marker, max_keys=max_keys)
        renamed = await standins.rename_page(bucket, page) if standins.supported else set()
        versions = [e for e in page.entries if not e.delete_marker and id(e) not in renamed]
        if not versions:
            return page
        indexed = await self._indexed_views(bucket, versions[0].key, versions[-1].key)
        converted = {key for key, _ in indexed}
        limiter = asyncio.Semaphore(16)

        async def fix(entry: VersionEntry) -> None:
            async with limiter:
                try:
                    info = await self.head_object(bucket, entry.key,
                                                  version_id=entry.version_id)
                except S3Error:
                    return
            entry.size, entry.etag = info.size, info.etag
            entry.last_modified = info.last_modified

        rest = []
        for entry in versions:
            view = indexed.get((entry.key, entry.etag))
            if view is not None:
                entry.size, entry.etag = view.size, view.etag
                entry.last_modified = view.last_modified
            elif physical.may_be_latent(entry.etag) or entry.key in converted:
                rest.append(entry)
        await asyncio.gather(*(fix(e) for e in rest))
        if await self._sse_indexed(bucket):
            await self.listing.plaintext_sizes(bucket, prefix, delimiter, versions)
        return page

    async def _indexed_views(self, bucket: str, first: str, last: str
                             ) -> dict[tuple[str, str], physical.LogicalView]:
        """(key, physical ETag) -> logical view of the latent objects in [first, last] the
        listing index holds (bounded pages)."""
        found: dict[tuple[str, str], physical.LogicalView] = {}
        start = physical.view_index_prefix(first)[:-1]
        end = physical.view_index_prefix(last) + "\U0010ffff"
        for _ in range(5):
            page = await self.backend.list_objects(bucket, prefix=physical.VIEWS_PREFIX,
                                                   start_after=start)
            for entry in page.entries:
                if entry.key > end:
                    return found
                parsed = physical.parse_view_index_key(entry.key)
                if parsed is not None and parsed[2] is not None:
                    found[parsed[0], parsed[1]] = parsed[2]
            if not page.is_truncated or page.next_start_after is None:
                return found
            start = page.next_start_after
        return found

    # -- reads -----------------------------------------------------------------
    async def head_object(self, bucket: str, key: str, *,
                          version_id: str | None = None) -> ObjectInfo:
        if await self._versioned_access(bucket, version_id):
            return await self.versioned.head_object(bucket, key, version_id)
        return await self.reads.head_object(bucket, key)

    async def get_object(self, bucket: str, key: str,
                         byte_range: tuple[int, int] | None = None, *,
                         known: ObjectInfo | None = None,
                         version_id: str | None = None) -> tuple[ObjectInfo, ObjectBody]:
        if await self._versioned_access(bucket, version_id):
            return await self.versioned.get_object(bucket, key, byte_range, version_id)
        return await self.reads.get_object(bucket, key, byte_range, known=known)

    async def latent_safetensors(self, bucket: str, key: str) -> tuple[ObjectInfo, bytes]:
        return await self.reads.latent_safetensors(bucket, key)

    async def _sse_indexed(self, bucket: str) -> bool:
        return bool(await self.get_bucket_config(bucket, SSE_INDEX))

    async def list_objects(self, bucket: str, *, prefix: str = "",
                           delimiter: str | None = None, start_after: str | None = None,
                           max_keys: int = 1000) -> ListPage:
        return await self.listing.list_objects(bucket, prefix=prefix, delimiter=delimiter,
                                               start_after=start_after, max_keys=max_keys)

    # -- writes ----------------------------------------------------------------
    async def _put_object(self, bucket: str, key: str, body: AsyncIterable[bytes],
                          meta: ObjectMeta, *, size: int | None, if_match: str | None,
                          if_none_match: str | None,
                          lock: ObjectLock | None = None) -> ObjectInfo:
        status = await self._status(bucket)
        if status is None:
            if lock is not None:
                raise S3Error("InvalidRequest", "Bucket is missing ObjectLockConfiguration")
            return await self.writes.put_object(bucket, key, body, meta, size=size,
                                                if_match=if_match,
                                                if_none_match=if_none_match)
        # Versioned: a plain write of a new version; nothing is materialised, nothing is
        # converted (docs/versioning.md).
        writable(key)
        if _is_latent_upload(meta):
            raise S3Error("InvalidRequest", "Latent uploads are not supported in versioned "
                          "buckets.")
        if_match, if_none_match = await self._versioned_conditions(bucket, key, if_match,
                                                                   if_none_match)
        extra = {"lock": lock} if lock is not None else {}
        # Suspended: the write replaces the `null` version, so it is kept first if a stub
        # reads from it, under the pair lock (no such stub written in between). Enabled
        # writes remove nothing and hold nothing.
        async with self.converter.pair_lock(bucket, key) if status == "Suspended" \
                else contextlib.nullcontext():
            if status == "Suspended":
                await self.versioned.keep_if_needed(bucket, key, "null")
            info = await self.backend.put_object(bucket, key, body, meta, size=size,
                                                 if_match=if_match,
                                                 if_none_match=if_none_match, **extra)
        self._schedule_versioned(bucket, key)
        return info

    def _schedule_versioned(self, bucket: str, key: str) -> None:
        """A new version in a versioned bucket: its pair is converted (in place, keeping
        version IDs) where the backend can (Converter.in_place), as after any write."""
        settings = self.config.bucket(bucket)
        if not settings.convert or physical.is_hidden(key) or \
                not (self.converter.in_place or self.converter.standins_enabled):
            return
        if key.endswith(settings.sidecar_suffix):
            self.converter.schedule(bucket, key[: -len(settings.sidecar_suffix)])
        elif looks_like_image(key, None):
            self.converter.schedule(bucket, key)

    async def _versioned_conditions(self, bucket: str, key: str, if_match: str | None,
                                    if_none_match: str | None
                                    ) -> tuple[str | None, str | None]:
        """If-Match / If-None-Match (`*` or an ETag) against the current version as clients
        see it; what the backend is asked to guard atomically (create-only, or the ETag of
        a plain current version)."""
        if if_match is None and if_none_match is None:
            return None, None
        try:
            current: ObjectInfo | None = await self.versioned.head_object(bucket, key, None)
        except S3Error as exc:
            if exc.code != "NoSuchKey":
                raise
            current = None
        none_match = if_none_match.strip() if if_none_match is not None else None
        if current is None:
            if if_match is not None:
                raise S3Error("NoSuchKey", Key=key)
            return None, "*" if none_match == "*" else None
        etags, _ = encryption.client_views(current)  # an SSE-S3 object's plaintext MD5 too
        if none_match == "*" or (none_match and none_match.strip('"') in etags):
            raise S3Error("PreconditionFailed", Condition="If-None-Match")
        if if_match is not None and if_match.strip('"') not in (*etags, "*"):
            raise S3Error("PreconditionFailed", Condition="If-Match")
        plain = physical.REP not in current.meta.internal
        return (current.etag if if_match is not None and plain else None), None

    async def delete_if_unchanged(self, bucket: str, key: str, *, etag: str | None = None,
                                  last_modified: datetime | None = None,
                                  size: int | None = None, version_id: str | None = None,
                                  current_version: str | None = None) -> DeleteResult:
        """A delete that happens only while the object (the current one, or `version_id`)
        is still what the caller judged: DeleteObjects' conditional entries and lifecycle
        expiry, which must never remove a newer write. PreconditionFailed when it differs,
        NoSuchKey when there is nothing to judge. In a bucket never versioned the check and
        the delete run under the key's pair lock; elsewhere a version ID pins the object."""

        def check(info: ObjectInfo | None) -> None:
            if info is None:
                raise S3Error("NoSuchKey", Key=key)
            etags, sizes = encryption.client_views(info)
            if etag is not None and etag.strip().strip('"') not in (*etags, "*"):
                raise S3Error("PreconditionFailed", Condition="ETag")
            if last_modified is not None and \
                    info.last_modified.replace(microsecond=0) != \
                    last_modified.astimezone(UTC).replace(microsecond=0):
                raise S3Error("PreconditionFailed", Condition="LastModifiedTime")
            if size is not None and size not in sizes:
                raise S3Error("PreconditionFailed", Condition="Size")
            if current_version is not None and info.version_id != current_version:
                raise S3Error("PreconditionFailed", Condition="VersionId")

        await self._versioned_access(bucket, version_id)
        status = await self._status(bucket)
        self.invalidate(bucket, key)
        try:
            if status is None:
                await self.writes.delete_object(bucket, key, check=check)
                return DeleteResult(version_id)
            if status == "Suspended" and version_id is None:
                # This delete replaces the `null` version for good: judged and deleted
                # under the pair lock, which this gateway's Suspended writes hold too, so
                # a write landing in between is not removed with it.
                async with self.converter.pair_lock(bucket, key):
                    stored = await self._stored_etag(bucket, key)
                    check(await self._judged(bucket, key, None))
                    await self.versioned.keep_if_needed(bucket, key, "null")
                    # The storage checks what was judged too (writes through other nodes).
                    return await self.backend.delete_object(bucket, key, if_match=stored)
            check(await self._judged(bucket, key, version_id))
            return await self._delete_object(bucket, key, version_id=version_id) or \
                DeleteResult()
        finally:
            self.changed(bucket, key)

    async def _stored_etag(self, bucket: str, key: str) -> str | None:
        """The ETag of what the key's current object is in storage (None: nothing)."""
        try:
            return (await self.backend.head_object(bucket, key)).etag
        except S3Error as exc:
            if exc.code not in ("NoSuchKey", "MethodNotAllowed"):
                raise
            return None

    async def _judged(self, bucket: str, key: str, version_id: str | None
                      ) -> ObjectInfo | None:
        """The version a conditional delete judges (None: nothing there)."""
        try:
            return await self.versioned.head_object(bucket, key, version_id)
        except S3Error as exc:
            if exc.code not in ("NoSuchKey", "NoSuchVersion", "MethodNotAllowed"):
                raise
            return None

    async def _delete_object(self, bucket: str, key: str, *, version_id: str | None = None,
                             bypass_governance: bool = False) -> DeleteResult | None:
        await self._versioned_access(bucket, version_id)
        status = await self._status(bucket)
        if status is None:
            await self.writes.delete_object(bucket, key)
            return DeleteResult(version_id)
        if physical.is_hidden(key):
            return DeleteResult(version_id)  # not a client's object
        # Under the pair lock: no stub naming the version is written between the keep
        # copy and the delete (Converter._finish_stub holds it too).
        async with self.converter.pair_lock(bucket, key):
            if version_id is not None and self.versioned.standins.supported:
                return await self._delete_version(bucket, key, version_id, bypass_governance)
            if version_id is not None:
                await self.versioned.keep_if_needed(bucket, key, version_id)
            elif status == "Suspended":
                await self.versioned.keep_if_needed(bucket, key, "null")
            return await super()._delete_object(bucket, key, version_id=version_id,
                                                bypass_governance=bypass_governance)

    async def _delete_version(self, bucket: str, key: str, version_id: str,
                              bypass_governance: bool) -> DeleteResult:
        """A permanent delete of client version `version_id` where stand-ins exist (the
        caller holds the key's pair lock). Design §5.8 and §8 R3: a version an intent names
        is tombstoned first, so the conversion in flight undoes itself and nothing stands
        in for the version meanwhile; then its stand-in (found through the records) goes,
        after a keep copy for stubs that read it, then the version itself (left by a
        crash, or never converted), then its alias."""
        standins = self.versioned.standins
        records = await standins.records(bucket, key, fresh=True)
        if records.empty:
            await self.versioned.keep_if_needed(bucket, key, version_id)
            return await super()._delete_object(bucket, key, version_id=version_id,
                                                bypass_governance=bypass_governance) \
                or DeleteResult(version_id)
        other = records.client_of(version_id)
        if other is not None and other.client != version_id:
            return DeleteResult(version_id)  # a stand-in's own ID: no client version
        tombstoned = version_id in records.intents and version_id not in records.tombstones
        if tombstoned:
            await standins.put_tombstone(bucket, key, version_id)
            records = await standins.records(bucket, key, fresh=True)
        try:
            alias = records.backend_of(version_id)
            target = alias.backend if alias is not None else None
            if target is None and version_id in records.intents:
                target = await standins.find_claimed(bucket, key, version_id,
                                                     records.intents[version_id])
            if target is not None:
                await self.versioned.keep_if_needed(bucket, key, version_id, target)
                await super()._delete_object(bucket, key, version_id=target,
                                             bypass_governance=bypass_governance)
                standins.forget_verified(bucket, key, target)
            else:
                await self.versioned.keep_if_needed(bucket, key, version_id)
            result = await super()._delete_object(bucket, key, version_id=version_id,
                                                  bypass_governance=bypass_governance)
            if alias is not None:
                await standins.drop_alias(bucket, key, alias)
        except S3Error:
            if tombstoned:
                await standins.drop_tombstone(bucket, key, version_id)
            raise
        if tombstoned and version_id not in \
                (await standins.records(bucket, key, fresh=True)).intents:
            await standins.drop_tombstone(bucket, key, version_id)  # its conversion ended
        done = result or DeleteResult(version_id)
        return DeleteResult(version_id, done.delete_marker)

    async def _copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                           meta: ObjectMeta | None, *, src_version_id: str | None = None,
                           lock: ObjectLock | None = None) -> ObjectInfo:
        dst_status = await self._status(dst_bucket)
        if src_version_id is None and dst_status is None and lock is None and \
                await self._status(src_bucket) is None:
            return await self.writes.copy_object(src_bucket, src_key, dst_bucket, dst_key,
                                                 meta)
        readable(src_key)
        writable(dst_key)
        if dst_status is None and lock is not None:
            raise S3Error("InvalidRequest", "Bucket is missing ObjectLockConfiguration")
        async with self.converter.pair_lock(dst_bucket, dst_key):
            if dst_status == "Suspended":
                await self.versioned.keep_if_needed(dst_bucket, dst_key, "null")
            info = await self._copy_version(src_bucket, src_key, dst_bucket, dst_key, meta,
                                            src_version_id=src_version_id, lock=lock)
        if dst_status is not None:
            self._schedule_versioned(dst_bucket, dst_key)
        return info

    async def _copy_version(self, src_bucket: str, src_key: str, dst_bucket: str,
                            dst_key: str, meta: ObjectMeta | None, *,
                            src_version_id: str | None, lock: ObjectLock | None
                            ) -> ObjectInfo:
        """A copy that involves a versioned bucket: the source version as clients read it
        (a latent one as its rendition, a plain one server-side)."""
        stored = await self.versioned._head(src_bucket, src_key, src_version_id)
        refuse_encrypted_source(stored)
        pinned = stored.version_id or src_version_id
        if physical.representation(stored) == "plain" and \
                physical.REP not in stored.meta.internal:
            return await super()._copy_object(src_bucket, src_key, dst_bucket, dst_key, meta,
                                              src_version_id=pinned, lock=lock)
        # A latent version: the copy is the bytes a client reads from it, as a plain object
        # with the same logical ETag. Read by the version ID clients know it by.
        client = src_version_id
        if client is None and pinned is not None and self.versioned.standins.supported:
            client = await self.versioned.standins.shown(src_bucket, src_key, stored)
        logical, body = await self.versioned.get_object(src_bucket, src_key, None,
                                                        client or pinned)
        data = await read_body(body)
        if meta is None:
            meta = ObjectMeta(content_type=logical.meta.content_type,
                              metadata=dict(logical.meta.metadata),
                              headers=dict(logical.meta.headers),
                              tags=await self.backend.get_tags(src_bucket, src_key,
                                                               version_id=pinned))

        async def once() -> AsyncIterator[bytes]:
            yield data

        extra = {"lock": lock} if lock is not None else {}
        return await self.backend.put_object(dst_bucket, dst_key, once(), meta,
                                             size=len(data), **extra)

    async def _backend_version(self, bucket: str, key: str, version_id: str | None, *,
                               fresh: bool = False) -> str | None:
        """The backend version a request naming client version `version_id` acts on (a
        stand-in's, where there are stand-ins)."""
        if version_id is None or not self.versioned.standins.supported:
            return version_id
        return await self.versioned.standins.resolve(bucket, key, version_id, fresh=fresh)

    async def get_tags(self, bucket: str, key: str, *,
                       version_id: str | None = None) -> dict[str, str]:
        target = await self._backend_version(bucket, key, version_id)
        return await super().get_tags(bucket, key, version_id=target)

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str], *,
                       version_id: str | None = None) -> None:
        """Under the key's tag lock: a conversion or restored sidecar committing meanwhile
        carries these tags, not the ones it read before (Converter.tags_lock)."""
        async with self.converter.tags_lock(bucket, key):
            await self.head_object(bucket, key, version_id=version_id)  # NoSuchVersion
            target = await self._backend_version(bucket, key, version_id, fresh=True)
            if target is None:
                await self.backend.put_tags(bucket, key, tags)
            else:
                await self.backend.put_tags(bucket, key, tags, version_id=target)
            self.changed(bucket, key)

    async def put_object_retention(self, bucket: str, key: str, *, version_id: str | None,
                                   mode: str | None, until: datetime | None,
                                   bypass_governance: bool = False) -> None:
        """On the backend version holding the bytes (a stand-in's: design §7.2)."""
        target = await self._backend_version(bucket, key, version_id, fresh=True)
        await super().put_object_retention(bucket, key, version_id=target, mode=mode,
                                           until=until, bypass_governance=bypass_governance)

    async def put_object_legal_hold(self, bucket: str, key: str, *, version_id: str | None,
                                    on: bool) -> None:
        target = await self._backend_version(bucket, key, version_id, fresh=True)
        await super().put_object_legal_hold(bucket, key, version_id=target, on=on)

    @asynccontextmanager
    async def _overwriting(self, bucket: str, key: str) -> AsyncIterator[None]:
        async with self.writes.overwriting(bucket, key):
            yield

    async def _before_overwrite(self, bucket: str, key: str) -> ObjectInfo | None:
        return await self.writes.before_overwrite(bucket, key)

    async def _after_overwrite(self, bucket: str, key: str,
                               replaced: ObjectInfo | None) -> None:
        await self.writes.after_overwrite(bucket, key, replaced)

    async def create_multipart_upload(self, bucket: str, key: str, meta: ObjectMeta, *,
                                      checksum: UploadChecksum | None = None,
                                      lock: ObjectLock | None = None) -> str:
        writable(key)  # the gateway's own records are never a client's to write
        return await super().create_multipart_upload(bucket, key, meta, checksum=checksum,
                                                     lock=lock)

    async def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                        parts: list[tuple[int, str]], *,
                                        if_match: str | None = None,
                                        checksum: str | None = None) -> ObjectInfo:
        writable(key)
        # If-Match as clients see the current object (404 when there is none); the backend
        # then guards a plain one's stored ETag atomically.
        if_match, _ = await self._versioned_conditions(bucket, key, if_match, None)
        status = await self._status(bucket)
        if status is not None:  # a new version: nothing materialised
            self.invalidate(bucket, key)
            async with self.converter.pair_lock(bucket, key):
                if status == "Suspended":
                    await self.versioned.keep_if_needed(bucket, key, "null")
                info = await self.backend.complete_multipart_upload(
                    bucket, key, upload_id, parts, if_match=if_match, checksum=checksum)
            self.changed(bucket, key)
            self._schedule_versioned(bucket, key)
            return info
        return await super().complete_multipart_upload(
            bucket, key, upload_id, parts, if_match=if_match, checksum=checksum)

    async def delete_bucket(self, bucket: str) -> None:
        try:
            await self.writes.delete_bucket(bucket)
        finally:
            self.records.forget(bucket)
            self.status.forget(bucket)


def _is_latent_upload(meta: ObjectMeta) -> bool:
    return meta.content_type.split(";")[0].strip().lower() == LATENT_CONTENT_TYPE
