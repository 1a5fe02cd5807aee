"""The one store the S3 handlers talk to.

It has the backend's operation set under the backend's names (backends/base.py documents
the contract) and forwards whatever it does not change, like a forwarding blob store. What a
write implies besides the write itself happens here, never in a handler: cached reads of the
key are dropped before and after it, what described the replaced object is tidied, conversion
is scheduled, and write listeners (the cluster's owner invalidation, for one) hear that the key
changed. `ForwardingStore` is the plain gateway; `objects.latent_store.LatentStore` overrides
the operations latent objects change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from ..backends.base import (
    Backend,
    BucketInfo,
    DeleteResult,
    ListPage,
    ObjectBody,
    ObjectInfo,
    ObjectLock,
    ObjectMeta,
    PartInfo,
    PartTable,
    UploadChecksum,
    UploadsPage,
    VersionsPage,
    read_body,
)
from ..errors import S3Error
from . import physical
from .bucket_records import BucketRecords, ObjectRecords

# Bucket record set once a PutObjectAcl wrote an object ACL record in the bucket: reads in
# buckets without one never look for such records.
OBJECT_ACLS = "object-acls"
# Bucket record set once an encrypted object was written in the bucket: its listings look up
# plaintext sizes (physical.sse_index_key); other buckets' listings never do.
SSE_INDEX = "sse-index"

log = logging.getLogger(__name__)

# The gateway's own key range (physical.HIDDEN_PREFIX), never listed to clients.
_HIDDEN = ".s3latent/"

# Called with (bucket, key) after a write or delete of the key committed (conversions too).
WriteListener = Callable[[str, str], None]


class ForwardingStore:
    """Plain objects: every operation goes to the backend; writes fire their hooks."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._listeners: list[WriteListener] = []
        # Owner and per-bucket records, read on every authorized request: cached briefly
        # (LatentStore sets the TTL to [cache] revalidate_after).
        self.records = BucketRecords(backend.get_bucket_config, backend.put_bucket_config,
                                     backend.get_bucket_owner)
        self.object_records = ObjectRecords(self._read_acl_record, ttl_of=self.records)

    # -- life cycle and identity ---------------------------------------------
    @property
    def name(self) -> str:
        """The backend's name (for logs and /health)."""
        return str(self.backend.name)

    @property
    def meta_bucket(self) -> str | None:
        """The backend bucket holding the gateway's own records, if it has one."""
        return getattr(self.backend, "meta_bucket", None)

    async def start(self) -> None:
        """Start the backend, then background work (conversion workers, sweeper)."""
        await self.backend.start()

    async def close(self) -> None:
        """Stop background work, then the backend."""
        await self.backend.close()

    # -- change notification ---------------------------------------------------
    def add_write_listener(self, listener: WriteListener) -> None:
        """`listener(bucket, key)` runs after every committed write or delete of a key."""
        self._listeners.append(listener)

    def invalidate(self, bucket: str, key: str) -> None:
        """Drop what this process caches for `key` (a write here, or a peer's word)."""

    def changed(self, bucket: str, key: str) -> None:
        """`key` was written or deleted: drop cached reads and tell the listeners."""
        self.invalidate(bucket, key)
        for listener in self._listeners:
            try:
                listener(bucket, key)
            except Exception:  # a listener's failure never fails the write that happened
                log.exception("write listener failed for %s/%s", bucket, key)

    def state(self, bucket: str, key: str) -> str | None:
        """Why an object is not (yet) latent: for x-s3latent-state on HEAD and GET."""
        return None

    # -- buckets ---------------------------------------------------------------
    async def list_buckets(self) -> list[BucketInfo]:
        return await self.backend.list_buckets()

    async def create_bucket(self, bucket: str, owner: str | None = None, *,
                            object_lock: bool = False) -> None:
        self.records.forget(bucket)
        try:
            if object_lock:
                await self.backend.create_bucket(bucket, owner=owner, object_lock=True)
            else:
                await self.backend.create_bucket(bucket, owner=owner)
        finally:
            self.records.forget(bucket)

    async def head_bucket(self, bucket: str) -> BucketInfo:
        return await self.backend.head_bucket(bucket)

    async def delete_bucket(self, bucket: str) -> None:
        """BucketNotEmpty only when a client could still list something in it."""
        try:
            await self.backend.delete_bucket(bucket)
        finally:
            self.records.forget(bucket)

    async def get_bucket_owner(self, bucket: str) -> str | None:
        """The creator's access key (cached up to the records' TTL)."""
        return await self.records.owner(bucket)

    async def get_bucket_config(self, bucket: str, name: str) -> Any | None:
        """A per-bucket record (cached up to the records' TTL; objects/bucket_records.py)."""
        return await self.records.get(bucket, name)

    async def put_bucket_config(self, bucket: str, name: str, value: Any | None) -> None:
        await self.records.put(bucket, name, value)

    async def get_object_acl_record(self, bucket: str, key: str) -> dict[str, Any] | None:
        """The ACL a PutObjectAcl set on `key` (a JSON object), or None; it names the write
        it belongs to (physical.A_TOKEN), which the caller compares with the object's."""
        if not await self.get_bucket_config(bucket, OBJECT_ACLS):
            return None
        return await self.object_records.get(bucket, key)

    async def put_object_acl_record(self, bucket: str, key: str,
                                    record: dict[str, Any]) -> None:
        """Store the ACL record of `key` (hidden key, physical.acl_record_key)."""
        if not await self.get_bucket_config(bucket, OBJECT_ACLS):
            await self.put_bucket_config(bucket, OBJECT_ACLS, True)
        data = json.dumps({"s3latent": "object-acl", "key": key, **record}).encode()
        self.object_records.forget(bucket, key)
        try:
            await physical.put_small(self.backend, bucket, physical.acl_record_key(key), data,
                                     ObjectMeta(content_type="application/json"))
        finally:
            self.object_records.forget(bucket, key)

    async def _read_acl_record(self, bucket: str, key: str) -> dict[str, Any] | None:
        return await self._read_record(bucket, physical.acl_record_key(key), "object-acl",
                                       "key", key)

    async def _read_record(self, bucket: str, record_key: str, kind: str, field: str,
                           owner: str) -> dict[str, Any] | None:
        """A hidden JSON record, or None when it is missing, unreadable, or names another
        kind or owner than the one asked for (a record is never trusted for another)."""
        try:
            _, body = await self.backend.get_object(bucket, record_key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise
        try:
            doc = json.loads(await read_body(body))
        except ValueError:
            return None
        if not isinstance(doc, dict) or doc.get("s3latent") != kind or doc.get(field) != owner:
            return None
        return doc

    async def index_encrypted(self, bucket: str, key: str, physical_etag: str,
                              size: int, etag: str) -> None:
        """Record an encrypted object's plaintext size for listings (best effort: a listing
        without it shows the stored size; HEAD and GET are always right)."""
        try:
            if not await self.get_bucket_config(bucket, SSE_INDEX):
                await self.put_bucket_config(bucket, SSE_INDEX, True)
            index_key = physical.sse_index_key(key, physical_etag, size, etag)
            if index_key is not None:
                await physical.put_small(self.backend, bucket, index_key, b"",
                                         ObjectMeta(content_type="application/x-empty"))
        except S3Error as exc:
            log.warning("plaintext size of %s/%s not indexed: %s", bucket, key, exc)

    async def put_upload_record(self, bucket: str, upload_id: str,
                                record: dict[str, str]) -> None:
        """Facts about a multipart upload its parts need (its encryption: objects/
        encryption.py), in a hidden key of the bucket; written before the upload id is
        given out, so a missing record means the upload has none."""
        data = json.dumps({"s3latent": "upload", "upload": upload_id, **record}).encode()
        await physical.put_small(self.backend, bucket, physical.upload_record_key(upload_id),
                                 data, ObjectMeta(content_type="application/json"))

    async def get_upload_record(self, bucket: str, upload_id: str) -> dict[str, str] | None:
        doc = await self._read_record(bucket, physical.upload_record_key(upload_id), "upload",
                                      "upload", upload_id)
        if doc is None:
            return None
        return {str(k): str(v) for k, v in doc.items() if k not in ("s3latent", "upload")}

    async def drop_upload_record(self, bucket: str, upload_id: str) -> None:
        """Best effort (a leftover is harmless and goes with the bucket)."""
        try:
            await self.backend.delete_object(bucket, physical.upload_record_key(upload_id))
        except S3Error as exc:
            log.info("could not drop the record of upload %s: %s", upload_id, exc)

    async def get_bucket_tags(self, bucket: str) -> dict[str, str] | None:
        return await self.backend.get_bucket_tags(bucket)

    async def put_bucket_tags(self, bucket: str, tags: dict[str, str] | None) -> None:
        await self.backend.put_bucket_tags(bucket, tags)

    # -- versions and object lock ------------------------------------------------
    async def get_bucket_versioning(self, bucket: str) -> str | None:
        return await self.backend.get_bucket_versioning(bucket)

    async def put_bucket_versioning(self, bucket: str, status: str) -> None:
        await self.backend.put_bucket_versioning(bucket, status)

    async def list_object_versions(self, bucket: str, *, prefix: str = "",
                                   delimiter: str | None = None,
                                   key_marker: str | None = None,
                                   version_id_marker: str | None = None,
                                   max_keys: int = 1000) -> VersionsPage:
        """The backend's versions without the gateway's own range."""
        page = await self.backend.list_object_versions(
            bucket, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
            version_id_marker=version_id_marker, max_keys=max_keys)
        if any(e.key.startswith(_HIDDEN) for e in page.entries) or \
                any(p.startswith(_HIDDEN) for p in page.common_prefixes):
            page.entries = [e for e in page.entries if not e.key.startswith(_HIDDEN)]
            page.common_prefixes = [p for p in page.common_prefixes
                                    if not p.startswith(_HIDDEN)]
            if page.is_truncated and not page.entries and not page.common_prefixes:
                return await self.list_object_versions(
                    bucket, prefix=prefix, delimiter=delimiter,
                    key_marker=_HIDDEN + "\U0010ffff", max_keys=max_keys)
        return page

    async def get_object_lock_configuration(self, bucket: str) -> dict[str, Any] | None:
        return await self.backend.get_object_lock_configuration(bucket)

    async def put_object_lock_configuration(self, bucket: str, config: dict[str, Any]) -> None:
        await self.backend.put_object_lock_configuration(bucket, config)

    async def put_object_retention(self, bucket: str, key: str, *, version_id: str | None,
                                   mode: str | None, until: datetime | None,
                                   bypass_governance: bool = False) -> None:
        await self.backend.put_object_retention(bucket, key, version_id=version_id,
                                                mode=mode, until=until,
                                                bypass_governance=bypass_governance)
        self.changed(bucket, key)

    async def put_object_legal_hold(self, bucket: str, key: str, *, version_id: str | None,
                                    on: bool) -> None:
        await self.backend.put_object_legal_hold(bucket, key, version_id=version_id, on=on)
        self.changed(bucket, key)

    # -- objects ---------------------------------------------------------------
    async def head_object(self, bucket: str, key: str, *,
                          version_id: str | None = None) -> ObjectInfo:
        if version_id is None:
            return await self.backend.head_object(bucket, key)
        return await self.backend.head_object(bucket, key, version_id=version_id)

    async def get_object(self, bucket: str, key: str,
                         byte_range: tuple[int, int] | None = None, *,
                         known: ObjectInfo | None = None,
                         version_id: str | None = None) -> tuple[ObjectInfo, ObjectBody]:
        """The object's info and body; `known` is what a HEAD of it just said, if any."""
        if version_id is None:
            return await self.backend.get_object(bucket, key, byte_range)
        return await self.backend.get_object(bucket, key, byte_range, version_id=version_id)

    async def put_object(self, bucket: str, key: str, body: AsyncIterable[bytes],
                         meta: ObjectMeta, *, size: int | None = None,
                         if_match: str | None = None,
                         if_none_match: str | None = None,
                         lock: ObjectLock | None = None) -> ObjectInfo:
        self.invalidate(bucket, key)
        info = await self._put_object(bucket, key, body, meta, size=size, if_match=if_match,
                                      if_none_match=if_none_match, lock=lock)
        self.changed(bucket, key)
        return info

    async def _put_object(self, bucket: str, key: str, body: AsyncIterable[bytes],
                          meta: ObjectMeta, *, size: int | None, if_match: str | None,
                          if_none_match: str | None,
                          lock: ObjectLock | None = None) -> ObjectInfo:
        extra = {"lock": lock} if lock is not None else {}
        return await self.backend.put_object(bucket, key, body, meta, size=size,
                                             if_match=if_match, if_none_match=if_none_match,
                                             **extra)

    async def delete_object(self, bucket: str, key: str, *, version_id: str | None = None,
                            bypass_governance: bool = False) -> DeleteResult:
        self.invalidate(bucket, key)
        result = await self._delete_object(bucket, key, version_id=version_id,
                                           bypass_governance=bypass_governance)
        self.changed(bucket, key)
        return result or DeleteResult()

    async def _delete_object(self, bucket: str, key: str, *, version_id: str | None = None,
                             bypass_governance: bool = False) -> DeleteResult | None:
        if version_id is None and not bypass_governance:
            return await self.backend.delete_object(bucket, key)
        return await self.backend.delete_object(bucket, key, version_id=version_id,
                                                bypass_governance=bypass_governance)

    async def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                          meta: ObjectMeta | None, *, src_version_id: str | None = None,
                          lock: ObjectLock | None = None) -> ObjectInfo:
        self.invalidate(dst_bucket, dst_key)
        info = await self._copy_object(src_bucket, src_key, dst_bucket, dst_key, meta,
                                       src_version_id=src_version_id, lock=lock)
        self.changed(dst_bucket, dst_key)
        return info

    async def _copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                           meta: ObjectMeta | None, *, src_version_id: str | None = None,
                           lock: ObjectLock | None = None) -> ObjectInfo:
        if src_version_id is None and lock is None:
            return await self.backend.copy_object(src_bucket, src_key, dst_bucket, dst_key,
                                                  meta)
        return await self.backend.copy_object(src_bucket, src_key, dst_bucket, dst_key, meta,
                                              src_version_id=src_version_id, lock=lock)

    async def list_objects(self, bucket: str, *, prefix: str = "",
                           delimiter: str | None = None, start_after: str | None = None,
                           max_keys: int = 1000) -> ListPage:
        return await self.backend.list_objects(bucket, prefix=prefix, delimiter=delimiter,
                                               start_after=start_after, max_keys=max_keys)

    async def get_tags(self, bucket: str, key: str, *,
                       version_id: str | None = None) -> dict[str, str]:
        if version_id is None:
            return await self.backend.get_tags(bucket, key)
        return await self.backend.get_tags(bucket, key, version_id=version_id)

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str], *,
                       version_id: str | None = None) -> None:
        # NoSuchKey as a client sees keys
        await self.head_object(bucket, key, version_id=version_id)
        if version_id is None:
            await self.backend.put_tags(bucket, key, tags)
        else:
            await self.backend.put_tags(bucket, key, tags, version_id=version_id)
        self.changed(bucket, key)

    async def get_part_table(self, bucket: str, key: str, etag: str) -> PartTable | None:
        return await self.backend.get_part_table(bucket, key, etag)

    async def latent_safetensors(self, bucket: str, key: str) -> tuple[ObjectInfo, bytes]:
        """The latent of a latent object as safetensors; plain objects have none."""
        raise S3Error("InvalidRequest", "This object is not stored as a latent.")

    # -- multipart uploads -----------------------------------------------------
    async def create_multipart_upload(self, bucket: str, key: str, meta: ObjectMeta, *,
                                      checksum: UploadChecksum | None = None,
                                      lock: ObjectLock | None = None) -> str:
        if lock is None:
            return await self.backend.create_multipart_upload(bucket, key, meta,
                                                              checksum=checksum)
        return await self.backend.create_multipart_upload(bucket, key, meta, checksum=checksum,
                                                          lock=lock)

    async def upload_checksum(self, bucket: str, key: str,
                              upload_id: str) -> UploadChecksum | None:
        return await self.backend.upload_checksum(bucket, key, upload_id)

    async def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int,
                          body: AsyncIterable[bytes], *, size: int | None = None) -> str:
        return await self.backend.upload_part(bucket, key, upload_id, part_number, body,
                                              size=size)

    async def list_parts(self, bucket: str, key: str, upload_id: str, *,
                         part_number_marker: int = 0,
                         max_parts: int = 1000) -> tuple[list[PartInfo], bool]:
        return await self.backend.list_parts(bucket, key, upload_id,
                                             part_number_marker=part_number_marker,
                                             max_parts=max_parts)

    async def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                        parts: list[tuple[int, str]], *,
                                        if_match: str | None = None,
                                        checksum: str | None = None) -> ObjectInfo:
        """Complete an upload onto `key`: an overwrite like a PUT, with the same hooks."""
        self.invalidate(bucket, key)
        async with self._overwriting(bucket, key):
            replaced = await self._before_overwrite(bucket, key)
            info = await self.backend.complete_multipart_upload(
                bucket, key, upload_id, parts, if_match=if_match, checksum=checksum)
            await self._after_overwrite(bucket, key, replaced)
        self.changed(bucket, key)
        return info

    @asynccontextmanager
    async def _overwriting(self, bucket: str, key: str) -> AsyncIterator[None]:
        """Held around _before_overwrite, the write and _after_overwrite (the latent store
        writes no sidecar stub for `key` meanwhile); nothing to hold here."""
        yield

    async def _before_overwrite(self, bucket: str, key: str) -> ObjectInfo | None:
        """A write that bypasses put_object is about to replace `key`; what it replaces."""
        return None

    async def _after_overwrite(self, bucket: str, key: str,
                               replaced: ObjectInfo | None) -> None:
        """That write landed: tidy what described the replaced object, schedule conversion."""

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self.backend.abort_multipart_upload(bucket, key, upload_id)

    async def list_multipart_uploads(self, bucket: str, *, prefix: str = "",
                                     delimiter: str | None = None,
                                     key_marker: str | None = None,
                                     upload_id_marker: str | None = None,
                                     max_uploads: int = 1000) -> UploadsPage:
        return await self.backend.list_multipart_uploads(
            bucket, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
            upload_id_marker=upload_id_marker, max_uploads=max_uploads)
