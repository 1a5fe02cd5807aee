"""An S3-compatible store (MinIO, SeaweedFS, AWS) as the backend, via aiobotocore.

Bodies are received whole before they are sent on (memory up to SPOOL_MEMORY,
a temporary file beyond): the front end verifies a client's signature and
checksums only at the end of its stream, and an object must not exist in the
backend until that has passed. The backend verifies what we send with
Content-MD5, so the stored ETag is the MD5 the client expects.

Part tables, multipart checksums and bucket owners are kept in the backend's
meta bucket (see s3_meta); bucket tags are the backend's own bucket tagging.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import os
import random
import secrets
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlencode

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from cachetools import TTLCache

from ..errors import S3Error
from ..httpdate import parse_http_date
from ..singleflight import SingleFlight
from .base import (
    MIN_PART_SIZE,
    STORED_HEADERS,
    BucketInfo,
    DeleteResult,
    HashedBody,
    ListEntry,
    ListPage,
    ObjectInfo,
    ObjectLock,
    ObjectMeta,
    ObjectPart,
    PartInfo,
    PartTable,
    UploadChecksum,
    UploadInfo,
    UploadsPage,
    VersionEntry,
    VersionsPage,
    marker_headers,
)
from .s3_datapath import DataPath, translate_status
from .s3_meta import GRACE_S as META_GRACE_S
from .s3_meta import (
    MetaStore,
    object_prefix,
    parse_part_checksum_key,
    part_checksum_key,
    upload_prefix,
)

log = logging.getLogger(__name__)

SPOOL_MEMORY = 8 * 1024 * 1024
READ_CHUNK = 256 * 1024
# How long a bucket seen to exist is trusted without asking the backend again.
BUCKET_CACHE_TTL = 10.0
# How long a bucket deletion is remembered, so that a bucket listing sent before it (and
# answered with the bucket) is not cached as proof the bucket exists; far above any
# backend call's duration.
DELETION_MEMORY_S = 600.0
# Our own metadata rides in the backend's user metadata under this prefix.
INTERNAL_PREFIX = "s3lx-"
_CHECKSUM_PREFIX = INTERNAL_PREFIX + "cks-"
_NO_CHECKSUM = UploadChecksum("", "")

_HEADER_PARAMS = {
    "cache-control": "CacheControl",
    "content-disposition": "ContentDisposition",
    "content-encoding": "ContentEncoding",
    "content-language": "ContentLanguage",
    "expires": "Expires",
}
_UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
    asyncio.TimeoutError,
    OSError,
)


# Calls whose repetition cannot change the outcome (a POST that creates or completes
# an upload is not among them). Timeouts are never retried: a hung backend would
# only hang again, multiplying the client's wait.
# The gateway's own range (objects.physical.HIDDEN_PREFIX; backends do not import it).
_HIDDEN = ".s3latent/"
# How long a bucket's versioning status is believed (another node may change it).
STATUS_TTL_S = 2.0

_IDEMPOTENT_OPS = frozenset({
    "list_buckets", "head_bucket", "create_bucket", "delete_bucket", "get_bucket_tagging",
    "put_bucket_tagging", "delete_bucket_tagging", "list_objects_v2", "list_objects",
    "head_object", "get_object", "put_object", "delete_object", "delete_objects",
    "copy_object", "upload_part", "upload_part_copy", "list_parts", "list_multipart_uploads",
    "abort_multipart_upload", "get_object_tagging", "put_object_tagging",
    "delete_object_tagging",
})


def _retryable(exc: BaseException, op: str) -> bool:
    """Connect failures (nothing was sent) always; a dropped connection for idempotent calls."""
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return True
    return isinstance(exc, ConnectionClosedError) and op in _IDEMPOTENT_OPS


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(min(2.0, 0.05 * 2 ** (attempt - 1)) * (0.5 + random.random()))


# Stores such as SeaweedFS make `dir/` a directory and drop its body. A client key
# ending in '/' is therefore stored as key + FOLDER_MARK: a character clients cannot
# write (names.check_new_key refuses it), sorting before every one they can, so
# listings keep their order, prefixes and delimiters (docs/s3-compat.md, "Key rules").
FOLDER_MARK = "\x01"


def _to_backend(key: str) -> str:
    return key + FOLDER_MARK if key.endswith("/") else key


def _object_key(key: str) -> str:
    """The backend key of client key `key`, or NoSuchKey for a key that cannot exist.

    Keys the store would alias (`a//b`, a leading `/`, `.` and `..` segments) are refused
    on every write (s3api.names.check_new_key), and FOLDER_MARK is not a character a
    client can write; such a key names nothing, so a read is NoSuchKey and a delete deletes
    nothing, instead of reaching whatever object the store would alias it to.
    """
    segments = key.split("/")
    if FOLDER_MARK in key or any(s in (".", "..") for s in segments) or \
            any(not s for s in segments[:-1]):
        raise S3Error("NoSuchKey", Key=key)
    return _to_backend(key)


def _from_backend(key: str) -> str:
    return key[:-1] if key.endswith("/" + FOLDER_MARK) else key


def _unquote_etag(etag: str) -> str:
    return etag.strip().strip('"')


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class _Spool:
    """A received body: bytes in memory, or a temp file once it outgrows SPOOL_MEMORY."""

    def __init__(self) -> None:
        self._md5: Any = None
        self._md5_hex: str | None = None
        self.size = 0
        self._chunks: list[bytes] = []
        self._file: Any = None

    async def fill(self, body: AsyncIterable[bytes]) -> None:
        # A verified request body already hashes itself (base.HashedBody): no second MD5.
        hashed = isinstance(body, HashedBody)
        self._md5 = None if hashed else hashlib.md5()
        async for chunk in body:
            if not chunk:
                continue
            self.size += len(chunk)
            if self._file is None and self.size <= SPOOL_MEMORY:
                if self._md5 is not None:
                    self._md5.update(chunk)
                self._chunks.append(chunk if isinstance(chunk, bytes) else bytes(chunk))
                continue
            if self._file is None:
                self._file = await asyncio.to_thread(
                    tempfile.TemporaryFile, prefix="s3latent-spool-"
                )
                pending, self._chunks = self._chunks, []
                await asyncio.to_thread(self._file.writelines, pending)
            await asyncio.to_thread(self._write, chunk)
        self._md5_hex = body.md5_hex if hashed else self._md5.hexdigest()  # type: ignore[union-attr]

    def _write(self, chunk: bytes) -> None:
        if self._md5 is not None:
            self._md5.update(chunk)
        self._file.write(chunk)

    @property
    def md5_hex(self) -> str:
        assert self._md5_hex is not None
        return self._md5_hex

    def payload(self) -> Any:
        """bytes, or the rewound file (aiohttp reads files off the event loop)."""
        if self._file is None:
            return b"".join(self._chunks)
        self._file.seek(0)
        return self._file

    @property
    def content_md5(self) -> str:
        return base64.b64encode(bytes.fromhex(self.md5_hex)).decode()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._chunks = []


class _Body:
    """Adapts a data-path response to the ObjectBody protocol."""

    def __init__(self, resp: Any) -> None:
        self._resp = resp

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._resp.content.iter_chunked(READ_CHUNK):
            yield chunk

    async def close(self) -> None:
        self._resp.release()


class S3Backend:
    """Backend on any S3 endpoint, signed with the backend's own credentials."""

    def __init__(
        self,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        *,
        region: str = "us-east-1",
        min_part_size: int = MIN_PART_SIZE,
        max_connections: int = 128,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        meta_bucket: str | None = None,
    ) -> None:
        self.name = endpoint_url
        self.endpoint_url = endpoint_url
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self.min_part_size = min_part_size
        self._config = AioConfig(
            max_pool_connections=max_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # botocore would retry read timeouts and non-idempotent calls too: _call
            # retries itself (see _retryable).
            retries={"mode": "standard", "total_max_attempts": 1},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Content-MD5 protects every body we send; a SHA-256 pass over it for the
            # signature would only cost CPU.
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            tcp_keepalive=True,
        )
        self._client: Any = None
        self._exit_stack: Any = None
        self._max_attempts = max(1, max_attempts)
        self._data = DataPath(endpoint_url, access_key, secret_key, region,
                              max_connections=max_connections, connect_timeout=connect_timeout,
                              read_timeout=read_timeout, max_attempts=max_attempts)
        # Buckets known to exist -> (creation time, when checked).
        self._buckets: dict[str, tuple[datetime, float]] = {}
        # Buckets this process deleted -> when the deletion was answered.
        self._deleted: dict[str, float] = {}
        self._listings: SingleFlight[str, tuple[float, list[BucketInfo]]] = SingleFlight()
        self.meta_bucket = meta_bucket or (
            "s3latent-meta-" + hashlib.sha256(access_key.encode()).hexdigest()[:16])
        self.meta = MetaStore(self.meta_bucket, self._call, self._data)
        # upload id -> its checksum (_NO_CHECKSUM: none), to spare a record read per part.
        self._upload_checksums: TTLCache[str, UploadChecksum] = TTLCache(
            maxsize=20_000, ttl=24 * 3600)
        # Best-effort removal of meta records, off the client's request path.
        self._cleanups: set[asyncio.Task[None]] = set()
        # bucket -> (versioning status, when asked): whether a 404 may be a delete marker.
        self._status: TTLCache[str, str | None] = TTLCache(maxsize=10_000, ttl=STATUS_TTL_S)
        self._cleanup_slots = asyncio.Semaphore(8)
        # bucket -> the generation its records live under (fixed for a bucket's life).
        self._generations: dict[str, str] = {}

    async def start(self) -> None:
        session = get_session()
        ctx = session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self._region,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            config=self._config,
        )
        self._exit_stack = ctx
        self._client = await ctx.__aenter__()
        await self._data.start()

    async def close(self) -> None:
        for task in list(self._cleanups):
            task.cancel()
        await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self._data.close()
        if self._exit_stack is not None:
            await self._exit_stack.__aexit__(None, None, None)
            self._exit_stack = self._client = None

    async def _call(self, op: str, bucket: str | None = None, key: str | None = None,
                    **params: Any) -> dict[str, Any]:
        if bucket is not None:
            params["Bucket"] = bucket
        if key is not None:
            params["Key"] = _object_key(key)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await getattr(self._client, op)(**params)
            except ClientError as exc:
                error = _translate(exc, op, bucket, key)
                if error.status >= 500 and op in _IDEMPOTENT_OPS and \
                        attempt < self._max_attempts:
                    await _backoff(attempt)
                    continue
                raise error from exc
            except _UNREACHABLE as exc:
                if _retryable(exc, op) and attempt < self._max_attempts:
                    await _backoff(attempt)
                    continue
                log.warning("backend %s unreachable during %s: %s", self.name, op, exc)
                raise S3Error(
                    "ServiceUnavailable", "The storage backend is unreachable; retry later."
                ) from exc

    # -- buckets ---------------------------------------------------------
    async def list_buckets(self) -> list[BucketInfo]:
        """The backend's buckets, without the meta bucket."""
        sent = time.monotonic()
        resp = await self._call("list_buckets")
        infos = [BucketInfo(b["Name"], _utc(b.get("CreationDate"))) for b in resp["Buckets"]]
        if any(b.name == self.meta_bucket for b in infos):
            self.meta.exists = True
        elif self.meta.exists is None:  # never reset: ensure() may have just created it
            self.meta.exists = False
        infos = [b for b in infos if b.name != self.meta_bucket]
        now = time.monotonic()
        self._deleted = {b: t for b, t in self._deleted.items() if now - t < DELETION_MEMORY_S}
        # A bucket deleted since this listing was sent may be in it: not cached as existing
        # (a PUT let through to SeaweedFS would create it again).
        self._buckets = {b.name: (b.created, now) for b in infos
                         if self._deleted.get(b.name, float("-inf")) < sent}
        return infos

    async def create_bucket(self, bucket: str, owner: str | None = None, *,
                            object_lock: bool = False) -> None:
        if bucket == self.meta_bucket:
            raise S3Error("BucketAlreadyExists", resource=bucket, BucketName=bucket)
        self._status.pop(bucket, None)
        try:
            extra = {"ObjectLockEnabledForBucket": True} if object_lock else {}
            await self._call("create_bucket", bucket, **extra)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                raise
            self._buckets.pop(bucket, None)
            try:
                await self.head_bucket(bucket)
            except S3Error:  # another account's bucket on a shared store
                raise S3Error("BucketAlreadyExists", resource=bucket,
                              BucketName=bucket) from exc
            record = await self.meta.get(f"buckets/{bucket}.json")
            recorded = record.get("owner") if record else None
            if recorded is not None and owner is not None and recorded != owner:
                raise S3Error("BucketAlreadyExists", resource=bucket,
                              BucketName=bucket) from exc
            raise S3Error("BucketAlreadyOwnedByYou", resource=bucket,
                          BucketName=bucket) from exc
        # After the bucket exists: a crash in between leaves it without an owner. The
        # generation names this life of the bucket: records of an earlier bucket of the same
        # name (a best-effort delete may leave them) are never read for this one.
        await self.meta.put(f"buckets/{bucket}.json",
                            {"owner": owner, "generation": secrets.token_hex(16)})

    async def _bucket_record(self, bucket: str) -> dict[str, Any]:
        await self.head_bucket(bucket)
        if not await self.meta.present():
            return {}
        return await self.meta.get(f"buckets/{bucket}.json") or {}

    async def get_bucket_owner(self, bucket: str) -> str | None:
        owner = (await self._bucket_record(bucket)).get("owner")
        return owner if isinstance(owner, str) else None

    async def _config_key(self, bucket: str, name: str, *, create: bool) -> str | None:
        """The meta key of one record of this life of `bucket`.

        A bucket without a generation (created before records existed, or by a create
        that crashed before its record) gets one on its first write; until then it has
        no records.
        """
        record = await self._bucket_record(bucket)
        generation = record.get("generation")
        if not isinstance(generation, str) or not generation.isalnum():
            if not create:
                return None
            generation = secrets.token_hex(16)
            await self.meta.put(f"buckets/{bucket}.json", {**record, "generation": generation})
        if not name.replace("-", "").isalnum():
            raise ValueError(f"bad record name {name!r}")
        return f"buckets/{bucket}/{generation}/{name}.json"

    async def get_bucket_config(self, bucket: str, name: str) -> Any | None:
        key = await self._config_key(bucket, name, create=False)
        if key is None:
            return None
        stored = await self.meta.get(key)
        return stored.get("value") if stored else None

    async def put_bucket_config(self, bucket: str, name: str, value: Any | None) -> None:
        if value is None:
            key = await self._config_key(bucket, name, create=False)
            if key is not None:
                await self.meta.delete(key)
            return
        await self.meta.ensure()
        key = await self._config_key(bucket, name, create=True)
        assert key is not None
        await self.meta.put(key, {"value": value})

    # -- unversioned records of a bucket (stand-ins, objects/standins.py) ---------------
    RECORDS = True  # put_record / list_records / delete_record: never versioned

    async def _records_prefix(self, bucket: str) -> str:
        """`records/<bucket>/<generation>/` in the meta bucket (this life of the bucket)."""
        generation = self._generations.get(bucket)
        if generation is None:
            await self.meta.ensure()
            key = await self._config_key(bucket, "records", create=True)
            assert key is not None
            generation = key.split("/")[2]
            self._generations[bucket] = generation
        return f"records/{bucket}/{generation}/"

    async def put_record(self, bucket: str, name: str,
                         value: dict[str, Any] | None = None) -> None:
        """Write one record (JSON, or empty) of `bucket` in the meta bucket."""
        await self.meta.put(await self._records_prefix(bucket) + name, value)

    async def get_record(self, bucket: str, name: str) -> dict[str, Any] | None:
        return await self.meta.get(await self._records_prefix(bucket) + name)

    async def delete_record(self, bucket: str, name: str) -> None:
        await self.meta.delete(await self._records_prefix(bucket) + name)

    async def list_records(self, bucket: str, prefix: str, *, start_after: str | None = None,
                           stop_after: str | None = None, limit: int = 5000) -> list[str]:
        """Names (relative) of the records under `prefix`, in order, after `start_after`
        and up to `stop_after`; at most `limit` (pages of 1000)."""
        base = await self._records_prefix(bucket)
        names: list[str] = []
        params: dict[str, Any] = {"Prefix": base + prefix, "MaxKeys": 1000}
        if start_after is not None:
            params["StartAfter"] = base + start_after
        while len(names) < limit:
            resp = await self._call("list_objects_v2", self.meta_bucket, **params)
            for obj in resp.get("Contents", []):
                name = obj["Key"][len(base):]
                if stop_after is not None and name > stop_after:
                    return names
                names.append(name)
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                break
            params["ContinuationToken"] = token
            params.pop("StartAfter", None)
        return names

    async def get_bucket_tags(self, bucket: str) -> dict[str, str] | None:
        """The backend's own bucket tagging: tags stay with the bucket's lifecycle."""
        await self.head_bucket(bucket)
        try:
            resp = await self._call("get_bucket_tagging", bucket)
        except S3Error as exc:
            if exc.code == "NoSuchTagSet":
                return None
            raise
        tags = {t["Key"]: t["Value"] for t in resp.get("TagSet", [])}
        return tags or None

    async def put_bucket_tags(self, bucket: str, tags: dict[str, str] | None) -> None:
        """PutBucketTagging / DeleteBucketTagging on the backend (validated already)."""
        await self.head_bucket(bucket)
        if tags is None:
            await self._call("delete_bucket_tagging", bucket)
            return
        tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
        await self._call("put_bucket_tagging", bucket, Tagging={"TagSet": tag_set})

    async def head_bucket(self, bucket: str) -> BucketInfo:
        cached = self._buckets.get(bucket)
        if cached is not None and time.monotonic() - cached[1] < BUCKET_CACHE_TTL:
            return BucketInfo(bucket, cached[0])
        # A request for a bucket that does not exist costs one HeadBucket, never a listing:
        # unsigned requests (public reads, CORS preflights) can name any bucket. Only a
        # bucket that exists is looked up in a listing (for its creation date), one listing
        # in flight for every such lookup at once.
        asked = time.monotonic()
        await self._call("head_bucket", bucket)
        sent, infos = await self._fresh_listing(asked)
        for info in infos:  # not if this process deleted it after the listing was sent
            if info.name == bucket and self._deleted.get(bucket, float("-inf")) < sent:
                return info
        raise S3Error("NoSuchBucket", resource=bucket, BucketName=bucket)

    async def _fresh_listing(self, after: float) -> tuple[float, list[BucketInfo]]:
        """A listing sent at or after `after` (joining one in flight when it is)."""
        while True:
            listing, _ = await self._listings.run("buckets", self._list_dated)
            if listing[0] >= after:
                return listing

    async def _list_dated(self) -> tuple[float, list[BucketInfo]]:
        sent = time.monotonic()
        return sent, await self.list_buckets()

    def _cleanup(self, prefix: str, keep: str | None = None, grace_s: float = 0.0) -> None:
        """Remove meta records under `prefix` in the background (best effort)."""

        async def run() -> None:
            async with self._cleanup_slots:
                await self.meta.delete_prefix(prefix, keep=keep, grace_s=grace_s)

        task = asyncio.get_running_loop().create_task(run())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _has_client_versions(self, bucket: str) -> bool:
        """Whether a versioned bucket holds versions outside the gateway's own range
        (SeaweedFS would delete such a bucket and its data; S3 says BucketNotEmpty).

        Delete markers alone do not count: SeaweedFS 4.48 keeps a `null` marker that no
        DELETE ?versionId=null removes, which would make such a bucket undeletable."""
        if await self._cached_status(bucket) is None:
            return False
        marker = None
        for _ in range(2):  # the hidden range is skipped in one step
            page = await self.list_object_versions(bucket, max_keys=100, key_marker=marker)
            if any(not e.key.startswith(_HIDDEN) and not e.delete_marker
                   for e in page.entries):
                return True
            if not page.is_truncated:
                return False
            marker = _HIDDEN + "\U0010ffff"
        return False

    async def _require_bucket(self, bucket: str) -> None:
        """Some stores (SeaweedFS) create a bucket on first PUT; S3 says NoSuchBucket."""
        await self.head_bucket(bucket)

    async def _not_found(self, exc: S3Error, bucket: str, key: str | None = None,
                         version_id: str | None = None) -> S3Error:
        """A 404 on an object may really be a missing bucket, or (versioned buckets) a
        delete marker: S3 says so with headers (405 for a marker's version ID), SeaweedFS
        does not, so one listing of the key's versions finds out."""
        if exc.code not in ("NoSuchKey", "NoSuchVersion"):
            return exc
        self._buckets.pop(bucket, None)
        await self.head_bucket(bucket)
        if key is None or (version_id is None and await self._cached_status(bucket) is None):
            return exc
        page = await self.list_object_versions(bucket, prefix=key, max_keys=1000)
        mine = [e for e in page.entries if e.key == key]
        if version_id is None:
            if mine and mine[0].is_latest and mine[0].delete_marker:
                return S3Error("NoSuchKey", resource=f"/{bucket}/{key}", Key=key,
                               headers=marker_headers(mine[0].version_id))
            return exc
        for e in mine:
            if e.version_id == version_id:
                if e.delete_marker:
                    return S3Error("MethodNotAllowed", Method="GET",
                                   ResourceType="DeleteMarker",
                                   headers=marker_headers(version_id, e.last_modified))
                return exc
        return S3Error("NoSuchVersion", resource=f"/{bucket}/{key}", Key=key,
                       VersionId=version_id)

    async def delete_bucket(self, bucket: str) -> None:
        self._buckets.pop(bucket, None)
        await self.head_bucket(bucket)
        page = await self.list_objects(bucket, max_keys=1)
        if page.entries or page.common_prefixes or await self._has_client_versions(bucket):
            raise S3Error("BucketNotEmpty", resource=bucket, BucketName=bucket)
        await self._call("delete_bucket", bucket)
        self._deleted[bucket] = time.monotonic()
        self._buckets.pop(bucket, None)
        self._generations.pop(bucket, None)
        if self.meta.exists:  # best effort: leftovers match nothing that exists
            await self.meta.delete_prefix(f"records/{bucket}/")
            try:
                await self.meta.delete(f"buckets/{bucket}.json")
            except S3Error as exc:
                log.warning("could not remove the owner record of %s: %s", bucket, exc)
            await self.meta.delete_prefix(f"buckets/{bucket}/")
            await self.meta.delete_prefix(object_prefix(bucket))

    # -- objects ---------------------------------------------------------
    async def put_object(
        self,
        bucket: str,
        key: str,
        body: AsyncIterable[bytes],
        meta: ObjectMeta,
        *,
        size: int | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
        lock: ObjectLock | None = None,
    ) -> ObjectInfo:
        await self._require_bucket(bucket)
        spool = _Spool()
        try:
            await spool.fill(body)
            if size is not None and spool.size != size:
                raise S3Error("IncompleteBody")
            headers = _meta_headers(meta)
            if if_match is not None:
                headers["If-Match"] = f'"{if_match}"'
            if if_none_match is not None:
                headers["If-None-Match"] = if_none_match
            headers["Content-MD5"] = spool.content_md5
            headers["Content-Length"] = str(spool.size)
            headers.update(_lock_headers(lock))
            resp = await self._data.request("PUT", bucket, _object_key(key), headers=headers,
                                            body=spool.payload())
            etag = _unquote_etag(resp.headers.get("ETag", "")) or spool.md5_hex
            vid = resp.headers.get("x-amz-version-id")
            resp.release()
            return ObjectInfo(key, spool.size, etag, datetime.now(UTC), meta,
                              version_id=vid or await self._null_if_versioned(bucket),
                              lock=lock)
        finally:
            spool.close()

    async def head_object(self, bucket: str, key: str, *,
                          version_id: str | None = None) -> ObjectInfo:
        try:
            resp = await self._folder_fallback("HEAD", bucket, key, version_id=version_id)
        except S3Error as exc:
            raise await self._not_found(exc, bucket, key, version_id) from None
        resp.release()
        return await self._versioned_info(bucket, _info_from_headers(key, resp.headers))

    async def _versioned_info(self, bucket: str, info: ObjectInfo) -> ObjectInfo:
        """A version ID on every object of a versioned bucket ("null" when the store
        sends none)."""
        if info.version_id is None:
            info.version_id = await self._null_if_versioned(bucket)
        return info

    async def _null_if_versioned(self, bucket: str) -> str | None:
        return "null" if await self._cached_status(bucket) is not None else None

    async def _cached_status(self, bucket: str) -> str | None:
        if bucket not in self._status:
            self._status[bucket] = await self._versioning_status(bucket)
        return self._status[bucket]

    async def _versioning_status(self, bucket: str) -> str | None:
        """GetBucketVersioning over the data path: it is asked again every STATUS_TTL_S per
        bucket, and through aiobotocore (~3 ms of CPU a call) that showed as 3-7% of the
        gateway's CPU under load (docs/bench-gateway.md)."""
        resp = await self._data.request("GET", bucket, None, query={"versioning": ""})
        try:
            raw = await resp.read()
        finally:
            resp.release()
        if not raw.strip():
            return None
        root = ET.fromstring(raw)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        return (root.findtext(ns + "Status") or "").strip() or None

    async def _folder_fallback(self, method: str, bucket: str, key: str,
                               headers: dict[str, str] | None = None,
                               version_id: str | None = None) -> Any:
        """A folder key's own object, else an empty marker stored as plain `dir/` earlier.

        SeaweedFS answers a plain `dir/` with the object `dir` when there is one: only
        an empty answer can be a marker, anything else is another key's data.
        """
        query = {"versionId": version_id} if version_id is not None else None
        try:
            return await self._data.request(method, bucket, _object_key(key), headers=headers,
                                            query=query)
        except S3Error as exc:
            if exc.code != "NoSuchKey" or not key.endswith("/"):
                raise
            missing = exc
        resp = await self._data.request(method, bucket, key, headers=headers, query=query)
        if resp.headers.get("Content-Length") != "0":
            resp.release()
            raise missing
        return resp

    async def get_object(
        self, bucket: str, key: str, byte_range: tuple[int, int] | None = None, *,
        version_id: str | None = None,
    ) -> tuple[ObjectInfo, _Body]:
        headers = {}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        try:
            resp = await self._folder_fallback("GET", bucket, key, headers=headers,
                                               version_id=version_id)
        except S3Error as exc:
            raise await self._not_found(exc, bucket, key, version_id) from None
        info = _info_from_headers(key, resp.headers)
        if info.version_id is None:
            try:
                info.version_id = await self._null_if_versioned(bucket)
            except BaseException:
                resp.release()
                raise
        content_range = resp.headers.get("Content-Range")
        if byte_range is not None and content_range:
            info.size = int(content_range.rpartition("/")[2])
        return info, _Body(resp)

    async def delete_object(self, bucket: str, key: str, *, version_id: str | None = None,
                            bypass_governance: bool = False,
                            if_match: str | None = None) -> DeleteResult:
        await self._require_bucket(bucket)
        params: dict[str, Any] = {}
        if version_id is not None:
            params["VersionId"] = version_id
        elif if_match is not None:
            params["IfMatch"] = f'"{_unquote_etag(if_match)}"'
        if bypass_governance:
            params["BypassGovernanceRetention"] = True
        result = DeleteResult(version_id)
        try:
            resp = await self._call("delete_object", bucket, key, **params)
            result = DeleteResult(resp.get("VersionId") or version_id,
                                  bool(resp.get("DeleteMarker")))
            if key.endswith("/") and version_id is None and \
                    await self._cached_status(bucket) is None:
                # a marker stored as plain `dir/` before FOLDER_MARK
                await self._call("delete_object", bucket, None, Key=key)
        except S3Error as exc:
            if exc.code == "AccessDenied" and version_id is not None:
                raise S3Error("AccessDenied", "The object version is protected by object "
                              "lock.") from exc
            if exc.code == "PreconditionFailed" and "IfMatch" in params and \
                    not await self._has_current(bucket, key):
                return result  # nothing there (SeaweedFS answers 412 for that): as S3 does
            if exc.code not in ("NoSuchKey", "NoSuchVersion"):
                raise
        if result.delete_marker and result.version_id is None:
            result.version_id = "null"
        if self.meta.exists and version_id is None and not result.delete_marker:
            # Part tables describe versions too: only a never-versioned delete drops them.
            self._cleanup(object_prefix(bucket, key), grace_s=META_GRACE_S)
        return result

    async def _has_current(self, bucket: str, key: str) -> bool:
        """Whether `key` has a current object (not a delete marker)."""
        try:
            await self._call("head_object", bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "MethodNotAllowed"):
                return False
            raise

    async def copy_object(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        meta: ObjectMeta | None,
        *,
        src_version_id: str | None = None,
        lock: ObjectLock | None = None,
    ) -> ObjectInfo:
        await self._require_bucket(dst_bucket)
        source = _object_key(src_key)
        if src_key.endswith("/"):  # which of the two forms holds it (see _folder_fallback)
            try:
                (await self._data.request("HEAD", src_bucket, source)).release()
            except S3Error as exc:
                if exc.code != "NoSuchKey":
                    raise
                source = src_key
        params: dict[str, Any] = {"CopySource": {"Bucket": src_bucket, "Key": source}}
        if src_version_id is not None:
            params["CopySource"]["VersionId"] = src_version_id
        params.update(_lock_params(lock))
        if meta is None:
            params["MetadataDirective"] = "COPY"
        else:
            params["MetadataDirective"] = "REPLACE"
            params.update(_meta_params(meta))
            if meta.tags:
                params["TaggingDirective"] = "REPLACE"
                params["Tagging"] = urlencode(meta.tags, quote_via=quote)
        resp = await self._call("copy_object", dst_bucket, dst_key, **params)
        vid = resp.get("VersionId")
        info = await self.head_object(dst_bucket, dst_key, version_id=vid)
        if "-" in info.etag:
            # The copy kept the multipart layout (same ETag): so does its part table.
            table = await self.get_part_table(src_bucket, src_key, info.etag)
            if table is not None:
                await self._put_part_table(dst_bucket, dst_key, table)
        return info

    async def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        params: dict[str, Any] = {"Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            params["Delimiter"] = delimiter
        if start_after:
            # Some stores (SeaweedFS) skip the prefix "X/" when asked to start after "X";
            # start just before X instead and drop what is not after it.
            # After a folder key: after its marked form (which also passes a plain `dir/`).
            params["StartAfter"] = (_to_backend(start_after) if start_after.endswith("/")
                                    else _just_before(start_after))
            params["MaxKeys"] = min(max_keys + 1, 1000)
        resp = await self._call("list_objects_v2", bucket, **params)
        entries: list[ListEntry] = []
        for o in resp.get("Contents", []):
            key = _from_backend(o["Key"])
            if start_after and key <= start_after:
                continue
            if entries and entries[-1].key == key:
                entries.pop()  # plain `dir/` then `dir/` + FOLDER_MARK: the latter is it
            entries.append(ListEntry(key, o["Size"], _unquote_etag(o.get("ETag", "")),
                                     _utc(o.get("LastModified"))))
        prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", [])
                    if not start_after or p["Prefix"] > start_after]
        truncated = bool(resp.get("IsTruncated"))
        if len(entries) + len(prefixes) > max_keys:
            items = sorted([e.key for e in entries] + prefixes)[:max_keys]
            keep = set(items)
            entries = [e for e in entries if e.key in keep]
            prefixes = [p for p in prefixes if p in keep]
            truncated = True
        last = max([e.key for e in entries[-1:]] + prefixes[-1:], default=None)
        return ListPage(entries, prefixes, truncated, last)

    # -- tagging ---------------------------------------------------------
    async def get_tags(self, bucket: str, key: str, *,
                       version_id: str | None = None) -> dict[str, str]:
        extra = {"VersionId": version_id} if version_id is not None else {}
        resp = await self._call("get_object_tagging", bucket, key, **extra)
        return {t["Key"]: t["Value"] for t in resp.get("TagSet", [])}

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str], *,
                       version_id: str | None = None) -> None:
        extra = {"VersionId": version_id} if version_id is not None else {}
        if not tags:
            await self._call("delete_object_tagging", bucket, key, **extra)
            return
        tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
        await self._call("put_object_tagging", bucket, key, Tagging={"TagSet": tag_set},
                         **extra)

    # -- versions and object lock ------------------------------------------
    async def get_bucket_versioning(self, bucket: str) -> str | None:
        await self.head_bucket(bucket)
        self._status[bucket] = await self._versioning_status(bucket)
        return self._status[bucket]

    async def put_bucket_versioning(self, bucket: str, status: str) -> None:
        await self.head_bucket(bucket)
        if status == "Suspended" and await self.get_object_lock_configuration(bucket):
            raise S3Error("InvalidBucketState", "An Object Lock configuration is present on "
                          "this bucket, so the versioning state cannot be changed.")
        await self._call("put_bucket_versioning", bucket,
                         VersioningConfiguration={"Status": status})
        self._status[bucket] = status

    async def _marked(self, bucket: str, entry: VersionEntry) -> bool:
        """Whether a listed `dir/` + U+FFFD version is really the folder key `dir/`."""
        try:
            resp = await self._data.request("HEAD", bucket, entry.key[:-1] + FOLDER_MARK,
                                            query={"versionId": entry.version_id})
        except S3Error as exc:
            return exc.code == "MethodNotAllowed"  # a delete marker's own version
        resp.release()
        return True

    async def list_object_versions(self, bucket: str, *, prefix: str = "",
                                   delimiter: str | None = None,
                                   key_marker: str | None = None,
                                   version_id_marker: str | None = None,
                                   max_keys: int = 1000) -> VersionsPage:
        """From the raw XML: versions and markers interleaved in the store's order (boto
        splits them into two lists, and SeaweedFS's IDs do not sort by age)."""
        # url encoding: FOLDER_MARK is not a character XML 1.0 can carry (unencoded, it comes
        # back as U+FFFD, which a client key may really end with).
        query = {"versions": "", "max-keys": str(max_keys), "encoding-type": "url"}
        if prefix:
            query["prefix"] = prefix
        if delimiter:
            query["delimiter"] = delimiter
        if key_marker:
            query["key-marker"] = _to_backend(key_marker)
        if version_id_marker:
            query["version-id-marker"] = version_id_marker
        resp = await self._data.request("GET", bucket, None, query=query)
        try:
            raw = await resp.read()
        finally:
            resp.release()
        root = ET.fromstring(raw)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        encoded = (root.findtext(ns + "EncodingType") or "").lower() == "url"

        def name(value: str) -> str:
            return _from_backend(unquote(value) if encoded else value)

        entries: list[VersionEntry] = []
        prefixes: list[str] = []
        for child in root:
            tag = child.tag[len(ns):]
            if tag in ("Version", "DeleteMarker"):
                def text(name: str, default: str = "", el: Any = child) -> str:
                    node = el.find(ns + name)
                    return node.text or default if node is not None else default
                entries.append(VersionEntry(
                    name(text("Key")), text("VersionId", "null") or "null",
                    text("IsLatest") == "true", tag == "DeleteMarker",
                    int(text("Size", "0") or 0), _unquote_etag(text("ETag")),
                    _utc(parse_iso(text("LastModified")))))
            elif tag == "CommonPrefixes":
                node = child.find(ns + "Prefix")
                if node is not None and node.text:
                    prefixes.append(unquote(node.text) if encoded else node.text)

        def top(name: str) -> str | None:
            node = root.find(ns + name)
            return node.text if node is not None and node.text else None

        truncated = top("IsTruncated") == "true"
        # SeaweedFS lists a key's `null` version below the others even when it is the
        # latest (a Suspended write): S3's order is newest first.
        # And after its `null` version is deleted while Suspended, it lists the version
        # below (the current one, as GET/HEAD answer) as not latest: a key's run that
        # starts on this page (not continued from a version-id-marker) starts with its
        # latest entry.
        continued = key_marker if version_id_marker else None
        ordered: list[VersionEntry] = []
        for entry in entries:
            if ordered and ordered[-1].key != entry.key:
                _newest_first(ordered, ordered_from=_run_start(ordered), continued=continued)
            ordered.append(entry)
        if ordered:
            _newest_first(ordered, ordered_from=_run_start(ordered), continued=continued)
        # SeaweedFS also answers keys outside the prefix ("a.png" for prefix "a.png.").
        entries = [e for e in ordered if e.key.startswith(prefix)]
        prefixes = [p for p in prefixes if p.startswith(prefix)]
        if not encoded and any(e.key.endswith("/\ufffd") for e in entries):
            # SeaweedFS sends FOLDER_MARK as U+FFFD here (no url encoding of version
            # listings), and a client key may really end in U+FFFD: ask which it is.
            renamed = [dataclasses.replace(e, key=e.key[:-1])
                       if e.key.endswith("/\ufffd") and await self._marked(bucket, e) else e
                       for e in entries]
            entries = sorted(renamed, key=lambda e: e.key)  # stable: versions keep order
        # The store's own marker, passed back as it came (key-marker of a page).
        next_key = top("NextKeyMarker") if truncated else None
        return VersionsPage(entries, prefixes, truncated,
                            unquote(next_key) if next_key is not None and encoded
                            else next_key,
                            top("NextVersionIdMarker") if truncated else None)

    async def get_object_lock_configuration(self, bucket: str) -> dict[str, Any] | None:
        await self.head_bucket(bucket)
        try:
            resp = await self._call("get_object_lock_configuration", bucket)
        except S3Error as exc:
            if exc.code in ("ObjectLockConfigurationNotFoundError", "NoSuchKey",
                            "NotImplemented", "InvalidRequest") or exc.status == 404:
                return None
            raise
        config = resp.get("ObjectLockConfiguration") or {}
        if config.get("ObjectLockEnabled") != "Enabled":
            return None
        default = (config.get("Rule") or {}).get("DefaultRetention")
        rule = None
        if default:
            rule = {"mode": default["Mode"]}
            if default.get("Days"):
                rule["days"] = int(default["Days"])
            if default.get("Years"):
                rule["years"] = int(default["Years"])
        return {"enabled": True, "rule": rule}

    async def put_object_lock_configuration(self, bucket: str, config: dict[str, Any]) -> None:
        await self.head_bucket(bucket)
        body: dict[str, Any] = {"ObjectLockEnabled": "Enabled"}
        rule = config.get("rule")
        if rule:
            retention: dict[str, Any] = {"Mode": rule["mode"]}
            if rule.get("days"):
                retention["Days"] = int(rule["days"])
            if rule.get("years"):
                retention["Years"] = int(rule["years"])
            body["Rule"] = {"DefaultRetention": retention}
        await self._call("put_object_lock_configuration", bucket,
                         ObjectLockConfiguration=body)

    async def put_object_retention(self, bucket: str, key: str, *, version_id: str | None,
                                   mode: str | None, until: datetime | None,
                                   bypass_governance: bool = False) -> None:
        params: dict[str, Any] = {"Retention": {"Mode": mode, "RetainUntilDate": until}
                                  if mode else {}}
        if version_id is not None:
            params["VersionId"] = version_id
        if bypass_governance:
            params["BypassGovernanceRetention"] = True
        await self._call("put_object_retention", bucket, key, **params)

    async def put_object_legal_hold(self, bucket: str, key: str, *, version_id: str | None,
                                    on: bool) -> None:
        extra = {"VersionId": version_id} if version_id is not None else {}
        await self._call("put_object_legal_hold", bucket, key,
                         LegalHold={"Status": "ON" if on else "OFF"}, **extra)

    # -- multipart -------------------------------------------------------
    async def create_multipart_upload(self, bucket: str, key: str, meta: ObjectMeta, *,
                                      checksum: UploadChecksum | None = None,
                                      lock: ObjectLock | None = None) -> str:
        await self._require_bucket(bucket)
        params = _meta_params(meta)
        params.update(_lock_params(lock))
        if meta.tags:
            params["Tagging"] = urlencode(meta.tags, quote_via=quote)
        resp = await self._call("create_multipart_upload", bucket, key, **params)
        upload_id: str = resp["UploadId"]
        if key.endswith("/"):
            # SeaweedFS lists uploads without encoding: FOLDER_MARK comes back as U+FFFD.
            await self.meta.put(upload_prefix(upload_id) + "key.json", {"key": key})
        if checksum is not None:
            # Lost on a crash before this write, with the answer: the client retries.
            await self.meta.put(upload_prefix(upload_id) + "checksum.json",
                                {"algorithm": checksum.algorithm, "type": checksum.type,
                                 "bucket": bucket, "key": key})
        self._upload_checksums[upload_id] = checksum or _NO_CHECKSUM
        return upload_id

    async def upload_checksum(self, bucket: str, key: str,
                              upload_id: str) -> UploadChecksum | None:
        """From this process's memory, else the upload's record (no existence check)."""
        cached = self._upload_checksums.get(upload_id)
        if cached is None:
            record = await self.meta.get(upload_prefix(upload_id) + "checksum.json")
            cached = _NO_CHECKSUM
            if record and record.get("bucket") == bucket and record.get("key") == key:
                cached = UploadChecksum(str(record["algorithm"]), str(record["type"]))
            self._upload_checksums[upload_id] = cached
        return None if cached is _NO_CHECKSUM else cached

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        body: AsyncIterable[bytes],
        *,
        size: int | None = None,
    ) -> str:
        spool = _Spool()
        try:
            await spool.fill(body)
            if size is not None and spool.size != size:
                raise S3Error("IncompleteBody")
            resp = await self._data.request(
                "PUT", bucket, _object_key(key),
                query={"partNumber": str(part_number), "uploadId": upload_id},
                headers={"Content-MD5": spool.content_md5, "Content-Length": str(spool.size)},
                body=spool.payload(),
            )
            resp.release()
            etag = _unquote_etag(resp.headers.get("ETag", "")) or spool.md5_hex
        finally:
            spool.close()
        checksum = await self.upload_checksum(bucket, key, upload_id)
        if checksum is not None and isinstance(body, HashedBody):
            value = body.checksums.get(checksum.algorithm)
            if value:
                # After the part: a crash in between leaves the part without a
                # checksum, which Complete reports (the client uploads it again).
                await self.meta.put(part_checksum_key(upload_id, part_number, etag, value))
        return etag

    async def _part_checksums(self, upload_id: str) -> dict[tuple[int, str], str]:
        """(part number, part ETag) -> checksum, from the upload's part records."""
        found: dict[tuple[int, str], str] = {}
        for name in await self.meta.list(upload_prefix(upload_id) + "parts/"):
            parsed = parse_part_checksum_key(name)
            if parsed is not None:
                found[(parsed[0], parsed[1])] = parsed[2]
        return found

    async def list_parts(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        *,
        part_number_marker: int = 0,
        max_parts: int = 1000,
    ) -> tuple[list[PartInfo], bool]:
        resp = await self._call(
            "list_parts",
            bucket,
            key,
            UploadId=upload_id,
            PartNumberMarker=part_number_marker,
            MaxParts=max_parts,
        )
        parts = [
            PartInfo(p["PartNumber"], _unquote_etag(p["ETag"]), p["Size"],
                     _utc(p.get("LastModified")))
            for p in resp.get("Parts", [])
        ]
        checksum = await self.upload_checksum(bucket, key, upload_id)
        if checksum is not None and parts:
            recorded = await self._part_checksums(upload_id)
            for part in parts:
                value = recorded.get((part.part_number, part.etag))
                if value:
                    part.checksums = {checksum.algorithm: value}
        return parts, bool(resp.get("IsTruncated"))

    async def complete_multipart_upload(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        *,
        if_match: str | None = None,
        checksum: str | None = None,
    ) -> ObjectInfo:
        # Check what S3 checks but some backends do not (part sizes, ETags).
        stored: dict[int, PartInfo] = {}
        marker = 0
        while True:
            page, truncated = await self.list_parts(
                bucket, key, upload_id, part_number_marker=marker
            )
            stored.update({p.part_number: p for p in page})
            if not truncated or not page:
                break
            marker = page[-1].part_number
        for index, (number, etag) in enumerate(parts):
            part = stored.get(number)
            if part is None or part.etag != _unquote_etag(etag):
                raise S3Error("InvalidPart", UploadId=upload_id, PartNumber=str(number))
            if index < len(parts) - 1 and part.size < self.min_part_size:
                raise S3Error(
                    "EntityTooSmall",
                    ProposedSize=str(part.size),
                    MinSizeAllowed=str(self.min_part_size),
                )
        md5s = b"".join(bytes.fromhex(_unquote_etag(e)) for _, e in parts)
        expected = f"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"
        upload_checksum = await self.upload_checksum(bucket, key, upload_id)
        table: PartTable | None = None
        if len(parts) > 1 or upload_checksum is not None:
            # Before the commit point, keyed by the ETag the object will have.
            table = PartTable(
                expected,
                [ObjectPart(n, stored[n].size, dict(stored[n].checksums)) for n, _ in parts],
                upload_checksum.algorithm if upload_checksum else None,
                upload_checksum.type if upload_checksum else None,
                checksum,
            )
            await self._put_part_table(bucket, key, table)
        guard = {"IfMatch": f'"{if_match}"'} if if_match is not None else {}
        done = await self._call(
            "complete_multipart_upload",
            bucket,
            key,
            UploadId=upload_id,
            **guard,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": f'"{_unquote_etag(e)}"'} for n, e in parts]
            },
        )
        vid = done.get("VersionId")
        info = await self.head_object(bucket, key, version_id=vid)
        if info.etag != expected:
            # A store with its own multipart ETags (or a write that replaced the object
            # since): the table names `expected` and is never used for this object.
            log.debug("backend multipart etag %s differs from S3's %s", info.etag, expected)
        if table is not None and vid is None:  # tables of the objects this one replaced
            self._cleanup(object_prefix(bucket, key),
                          keep=self._table_name(bucket, key, info.etag), grace_s=META_GRACE_S)
        if upload_checksum is not None or key.endswith("/"):
            self._cleanup(upload_prefix(upload_id))
        return info

    @staticmethod
    def _table_name(bucket: str, key: str, etag: str) -> str:
        return f"{object_prefix(bucket, key)}{etag}.json"

    async def _put_part_table(self, bucket: str, key: str, table: PartTable) -> None:
        await self.meta.put(self._table_name(bucket, key, table.etag),
                            {"key": key, **table.to_json()})

    async def get_part_table(self, bucket: str, key: str, etag: str) -> PartTable | None:
        """The meta record for exactly this object (key and ETag), if one was written."""
        if "/" in etag:
            return None
        record = await self.meta.get(self._table_name(bucket, key, etag))
        if record is None or record.get("etag") != etag or record.get("key") != key:
            return None
        try:
            return PartTable.from_json(record)
        except (KeyError, TypeError, ValueError):
            return None

    async def _upload_key(self, listed: str, upload_id: str) -> str:
        """The client's key of a listed upload (a folder key's mark may come back mangled)."""
        if listed.endswith(("/" + FOLDER_MARK, "/\ufffd")):
            record = await self.meta.get(upload_prefix(upload_id) + "key.json")
            if record is not None:
                return str(record["key"])
        return _from_backend(listed)

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self.list_parts(bucket, key, upload_id, max_parts=1)  # NoSuchUpload if gone
        await self._call("abort_multipart_upload", bucket, key, UploadId=upload_id)
        if await self.upload_checksum(bucket, key, upload_id) is not None or \
                key.endswith("/"):
            self._cleanup(upload_prefix(upload_id))
        self._upload_checksums.pop(upload_id, None)

    async def list_multipart_uploads(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        key_marker: str | None = None,
        upload_id_marker: str | None = None,
        max_uploads: int = 1000,
    ) -> UploadsPage:
        params: dict[str, Any] = {"Prefix": prefix, "MaxUploads": max_uploads}
        if delimiter:
            params["Delimiter"] = delimiter
        if key_marker:
            params["KeyMarker"] = _to_backend(key_marker)
            if upload_id_marker:
                params["UploadIdMarker"] = upload_id_marker
        resp = await self._call("list_multipart_uploads", bucket, **params)
        uploads = [
            UploadInfo(await self._upload_key(u["Key"], u["UploadId"]), u["UploadId"],
                       _utc(u.get("Initiated")))
            for u in resp.get("Uploads", [])
        ]
        return UploadsPage(
            uploads,
            [p["Prefix"] for p in resp.get("CommonPrefixes", [])],
            bool(resp.get("IsTruncated")),
            _from_backend(resp.get("NextKeyMarker") or "") or None,
            resp.get("NextUploadIdMarker") or None,
        )


def parse_iso(text: str) -> datetime | None:
    """An ISO 8601 time as S3 writes it (listings, lock dates); None if unreadable."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return parse_http_date(text)


def _lock_headers(lock: ObjectLock | None) -> dict[str, str]:
    """The x-amz-object-lock-* headers of a data-path PUT."""
    headers: dict[str, str] = {}
    if lock is None:
        return headers
    if lock.mode and lock.retain_until:
        headers["x-amz-object-lock-mode"] = lock.mode
        headers["x-amz-object-lock-retain-until-date"] = \
            lock.retain_until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if lock.legal_hold:
        headers["x-amz-object-lock-legal-hold"] = "ON"
    return headers


def _lock_params(lock: ObjectLock | None) -> dict[str, Any]:
    """The same for boto calls (CopyObject, CreateMultipartUpload)."""
    params: dict[str, Any] = {}
    if lock is None:
        return params
    if lock.mode and lock.retain_until:
        params["ObjectLockMode"] = lock.mode
        params["ObjectLockRetainUntilDate"] = lock.retain_until
    if lock.legal_hold:
        params["ObjectLockLegalHoldStatus"] = "ON"
    return params


def _run_start(entries: list[VersionEntry]) -> int:
    """Index of the first entry of the last key's run."""
    i = len(entries) - 1
    while i > 0 and entries[i - 1].key == entries[-1].key:
        i -= 1
    return i


def _newest_first(entries: list[VersionEntry], ordered_from: int,
                  continued: str | None = None) -> None:
    """Move a key's `null` version that SeaweedFS flags latest but lists below the others
    (written while Suspended) to the front; the store's order is kept otherwise (its
    timestamps are too coarse to order by). A run with no entry flagged latest that is
    not the rest of key `continued` (a page's first key, after a version-id-marker)
    gets its first entry flagged: SeaweedFS forgets the flag when the `null` version on
    top is deleted."""
    run = entries[ordered_from:]
    for i, entry in enumerate(run):
        if i and entry.is_latest and entry.version_id == "null":
            run.insert(0, run.pop(i))
            break
    if run and not any(e.is_latest for e in run) and \
            not (ordered_from == 0 and run[0].key == continued):
        run[0] = dataclasses.replace(run[0], is_latest=True)
    entries[ordered_from:] = run


def _just_before(key: str) -> str:
    """A string sorting just below `key`: nothing a client stores lies between them."""
    last = ord(key[-1])
    if last == 0:
        return key[:-1]
    prev = last - 1 if not 0xE000 == last else 0xD7FF
    return key[:-1] + chr(prev) + "\U0010ffff"


def _stored_metadata(meta: ObjectMeta) -> dict[str, str]:
    """User, checksum and internal metadata as one backend map (names never collide).

    A user name inside INTERNAL_PREFIX would be read back as the gateway's own state;
    the front end refuses such names, and this is the last guard (never stored).
    """
    metadata: dict[str, str] = {}
    for name, value in meta.metadata.items():
        if name.lower().startswith(INTERNAL_PREFIX):
            raise S3Error("InvalidArgument", f"User metadata names starting with "
                          f"\"{INTERNAL_PREFIX}\" are reserved for the gateway.",
                          ArgumentName=f"x-amz-meta-{name}")
        metadata[name] = value
    for algorithm, value in meta.checksums.items():
        metadata[_CHECKSUM_PREFIX + algorithm] = value
    for name, value in meta.internal.items():
        metadata[INTERNAL_PREFIX + name] = value
    return metadata


def _meta_params(meta: ObjectMeta) -> dict[str, Any]:
    metadata = _stored_metadata(meta)
    params: dict[str, Any] = {"ContentType": meta.content_type, "Metadata": metadata}
    for header, value in meta.headers.items():
        if header in _HEADER_PARAMS:
            params[_HEADER_PARAMS[header]] = value
    return params


def _meta_headers(meta: ObjectMeta) -> dict[str, str]:
    """The PUT headers that store `meta` (the data path's form of _meta_params)."""
    headers = {"Content-Type": meta.content_type}
    metadata = _stored_metadata(meta)
    for name, value in metadata.items():
        headers[f"x-amz-meta-{name}"] = value
    for header, value in meta.headers.items():
        if header in _HEADER_PARAMS:
            headers[header] = value
    if meta.tags:
        headers["x-amz-tagging"] = urlencode(meta.tags, quote_via=quote)
    return headers


def _info_from_headers(key: str, headers: Any) -> ObjectInfo:
    """ObjectInfo from a data-path GET/HEAD response's headers."""
    raw_meta = {name[len("x-amz-meta-"):].lower(): value for name, value in headers.items()
                if name.lower().startswith("x-amz-meta-")}
    resp: dict[str, Any] = {
        "Metadata": raw_meta,
        "ContentType": headers.get("Content-Type"),
        "ContentLength": headers.get("Content-Length", 0),
        "ETag": headers.get("ETag", ""),
        "LastModified": parse_http_date(headers.get("Last-Modified")) or datetime.now(UTC),
        "PartsCount": headers.get("x-amz-mp-parts-count"),
        "ResponseMetadata": {"HTTPHeaders": {n.lower(): v for n, v in headers.items()}},
    }
    info = _info_from(key, resp)
    info.version_id = headers.get("x-amz-version-id") or None
    mode = headers.get("x-amz-object-lock-mode")
    until = headers.get("x-amz-object-lock-retain-until-date")
    hold = headers.get("x-amz-object-lock-legal-hold", "").upper() == "ON"
    if mode or hold:
        info.lock = ObjectLock(mode or None, _utc(parse_iso(until)) if until else None, hold)
    count = headers.get("x-amz-tagging-count")
    if count and count.isdigit():
        info.tag_count = int(count)
    return info


def _info_from(key: str, resp: dict[str, Any]) -> ObjectInfo:
    raw_meta = resp.get("Metadata", {}) or {}
    user = {k: v for k, v in raw_meta.items() if not k.startswith(INTERNAL_PREFIX)}
    internal = {k: v for k, v in raw_meta.items() if k.startswith(INTERNAL_PREFIX)}
    checksums = {
        k[len(_CHECKSUM_PREFIX):]: v for k, v in internal.items() if k.startswith(_CHECKSUM_PREFIX)
    }
    private = {
        k[len(INTERNAL_PREFIX):]: v
        for k, v in internal.items()
        if not k.startswith(_CHECKSUM_PREFIX)
    }
    headers: dict[str, str] = {}
    http_headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    for header in STORED_HEADERS:
        if header in http_headers:
            headers[header] = http_headers[header]
    meta = ObjectMeta(
        content_type=resp.get("ContentType") or "binary/octet-stream",
        metadata=user,
        headers=headers,
        checksums=checksums,
        internal=private,
    )
    parts = resp.get("PartsCount")
    return ObjectInfo(
        key,
        int(resp.get("ContentLength", 0)),
        _unquote_etag(resp.get("ETag", "")),
        _utc(resp.get("LastModified")),
        meta,
        parts_count=int(parts) if parts else None,
    )


def _translate(exc: ClientError, op: str, bucket: str | None, key: str | None) -> S3Error:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
    return translate_status(status, str(err.get("Code", "")), err.get("Message"), op, bucket,
                            key)


def backend_from_url(url: str, access_key: str | None, secret_key: str | None,
                     region: str = "us-east-1", *, connect_timeout: float = 2.0,
                     read_timeout: float = 10.0, max_attempts: int = 3,
                     meta_bucket: str | None = None) -> Any:
    """`file:///path` or a bare path -> LocalBackend; `http(s)://` -> S3Backend.

    An S3 backend keeps the gateway's records in `meta_bucket` (None: a name derived
    from the backend identity, so gateways sharing an account share it); the timeouts
    and attempts apply to every call to an S3 backend.
    """
    if url.startswith(("http://", "https://")):
        if not access_key or not secret_key:
            raise ValueError(
                "an S3 backend needs S3LATENT_BACKEND_ACCESS_KEY and S3LATENT_BACKEND_SECRET_KEY"
            )
        return S3Backend(url, access_key, secret_key, region=region,
                         connect_timeout=connect_timeout, read_timeout=read_timeout,
                         max_attempts=max_attempts, meta_bucket=meta_bucket)
    from .local import LocalBackend

    path = url[len("file://"):] if url.startswith("file://") else url
    return LocalBackend(os.path.abspath(path))
