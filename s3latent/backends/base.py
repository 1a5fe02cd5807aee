"""The one small interface every storage backend implements.

The S3 front end verifies signatures and checksums *while* a body streams in; a
backend must therefore commit an object only after the body iterator is exhausted
without raising. If it raises (bad signature, client gone), the backend leaves
no trace of the write and re-raises the same exception.

Errors a client should see are raised as `S3Error` (NoSuchBucket, NoSuchKey,
BucketNotEmpty, NoSuchUpload, InvalidPart, PreconditionFailed, ...). Anything
else is a backend failure and becomes 500/503 at the front end.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

# Headers stored with an object and returned on GET/HEAD, besides Content-Type.
STORED_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
)


@dataclass
class ObjectMeta:
    """What a client sets on an object at write time."""

    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)  # x-amz-meta-*, prefix stripped
    headers: dict[str, str] = field(default_factory=dict)  # subset of STORED_HEADERS
    tags: dict[str, str] = field(default_factory=dict)
    # Checksum values the client supplied or asked for, e.g. {"crc32": "base64=="}.
    checksums: dict[str, str] = field(default_factory=dict)
    # Gateway-private values (latent state, container mirror); never shown to clients.
    internal: dict[str, str] = field(default_factory=dict)


@dataclass
class ObjectLock:
    """A version's object lock: retention (mode + date) and legal hold, independent."""

    mode: str | None = None  # "GOVERNANCE" or "COMPLIANCE"; None: no retention
    retain_until: datetime | None = None
    legal_hold: bool = False

    def retained(self, now: datetime) -> bool:
        """Whether the retention still forbids deleting the version at `now`."""
        return self.mode is not None and self.retain_until is not None and \
            self.retain_until > now

    def locked(self, now: datetime) -> bool:
        """Retained or held: conversion and permanent deletes leave the version alone."""
        return self.legal_hold or self.retained(now)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "until": self.retain_until.isoformat()
                if self.retain_until else None, "hold": self.legal_hold}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ObjectLock | None:
        if not data:
            return None
        until = data.get("until")
        return cls(data.get("mode"), datetime.fromisoformat(until) if until else None,
                   bool(data.get("hold")))


@dataclass
class ObjectInfo:
    """What HEAD tells about a stored object (no body)."""

    key: str
    size: int
    etag: str  # without quotes: "hex" or "hex-N" for multipart
    last_modified: datetime  # timezone-aware UTC
    meta: ObjectMeta = field(default_factory=ObjectMeta)
    parts_count: int | None = None
    # Number of tags when the backend reports it without the tags themselves.
    tag_count: int | None = None
    # The part table, when the backend reads it with the object (local backend).
    part_table: PartTable | None = None
    # The backend version: None in a bucket that was never versioned, "null" for the
    # version written while versioning was off or suspended.
    version_id: str | None = None
    # The version's object lock, if it has one (retention or legal hold).
    lock: ObjectLock | None = None


@dataclass
class BucketInfo:
    name: str
    created: datetime


@dataclass
class ObjectPart:
    """One part of a completed multipart object, as GetObjectAttributes lists it."""

    part_number: int
    size: int
    # algorithm -> base64 digest of this part (only the upload's checksum algorithm).
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass
class PartTable:
    """The part layout of a completed multipart object, kept after Complete.

    `etag` is the object's ETag when the table was recorded: a table whose ETag
    differs from the object's current one describes an older object and is not used.
    `checksum` is the object-level value ("b64-N" for COMPOSITE), if any.
    """

    etag: str
    parts: list[ObjectPart]
    checksum_algorithm: str | None = None
    checksum_type: str | None = None
    checksum: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A compact JSON form ([number, size, checksum] per part)."""
        alg = self.checksum_algorithm
        return {"etag": self.etag, "algorithm": alg, "type": self.checksum_type,
                "checksum": self.checksum,
                "parts": [[p.part_number, p.size, p.checksums.get(alg) if alg else None]
                          for p in self.parts]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartTable:
        alg = data.get("algorithm")
        parts = [ObjectPart(int(n), int(size), {alg: cks} if alg and cks else {})
                 for n, size, cks in data.get("parts", [])]
        return cls(str(data["etag"]), parts, alg, data.get("type"), data.get("checksum"))


@dataclass
class UploadChecksum:
    """The checksum a multipart upload was created with (x-amz-checksum-algorithm/-type)."""

    algorithm: str  # lower case, one of s3.checksums.ALGORITHMS
    type: str  # "COMPOSITE" or "FULL_OBJECT"


@dataclass
class ListEntry:
    """One key of a listing: only what the backend's listing gives cheaply."""

    key: str
    size: int
    etag: str
    last_modified: datetime


@dataclass
class ListPage:
    entries: list[ListEntry]
    common_prefixes: list[str]
    is_truncated: bool
    # The last key or common prefix returned; the next page starts after it.
    next_start_after: str | None


@dataclass
class VersionEntry:
    """One version (or delete marker) of a ListObjectVersions page."""

    key: str
    version_id: str
    is_latest: bool
    delete_marker: bool
    size: int
    etag: str
    last_modified: datetime


@dataclass
class VersionsPage:
    entries: list[VersionEntry]
    common_prefixes: list[str]
    is_truncated: bool
    next_key_marker: str | None
    next_version_id_marker: str | None


@dataclass
class DeleteResult:
    """What a delete did: the version it removed or the marker it added."""

    version_id: str | None = None
    delete_marker: bool = False


def marker_headers(version_id: str, last_modified: datetime | None = None) -> dict[str, str]:
    """The headers S3 sends with a 404/405 about a delete marker."""
    from email.utils import format_datetime
    headers = {"x-amz-delete-marker": "true", "x-amz-version-id": version_id}
    if last_modified is not None:
        headers["Last-Modified"] = format_datetime(last_modified, usegmt=True)
    return headers


@dataclass
class PartInfo:
    part_number: int
    etag: str
    size: int
    last_modified: datetime
    # Checksums recorded for the part (uploads created with a checksum algorithm).
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass
class UploadInfo:
    key: str
    upload_id: str
    initiated: datetime


@dataclass
class UploadsPage:
    uploads: list[UploadInfo]
    common_prefixes: list[str]
    is_truncated: bool
    next_key_marker: str | None
    next_upload_id_marker: str | None


class HashedBody:
    """A body iterator that computes the MD5 of what it yields.

    Backends that need the MD5 (for Content-MD5 or the ETag) read `md5_hex` once
    the iterator is exhausted instead of hashing the bytes a second time.
    """

    def __aiter__(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    @property
    def md5_hex(self) -> str:
        raise NotImplementedError

    @property
    def checksums(self) -> dict[str, str]:
        """x-amz-checksum values verified or computed for the body (after the end)."""
        return {}


class ObjectBody(Protocol):
    """A streaming object body; always closed by the reader."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """Storage behind the gateway. All methods are coroutines; none blocks the loop."""

    name: str  # for logs, e.g. "file:///data" or "http://127.0.0.1:8333"

    async def start(self) -> None:
        """Open pools, create directories; called once before serving."""

    async def close(self) -> None:
        """Release pools and files."""

    # -- buckets ---------------------------------------------------------
    async def list_buckets(self) -> list[BucketInfo]: ...

    async def create_bucket(self, bucket: str, owner: str | None = None, *,
                            object_lock: bool = False) -> None:
        """Create `bucket`, recording `owner` (the creating access key) when given.

        `object_lock` creates it with object lock enabled (and versioning Enabled with it).

        Raises BucketAlreadyExists if it exists with another recorded owner,
        BucketAlreadyOwnedByYou if it exists otherwise (same owner, or none recorded).
        """

    async def head_bucket(self, bucket: str) -> BucketInfo:
        """Raises NoSuchBucket."""

    async def delete_bucket(self, bucket: str) -> None:
        """Raises NoSuchBucket, BucketNotEmpty (objects; in-progress uploads do not count)."""

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
        """Store atomically. `size` is the exact decoded length when known.

        In a versioned bucket the write adds a version (Enabled) or replaces the `null`
        one (Suspended); the returned info carries its `version_id`. `lock` is the new
        version's object lock (lock buckets only); without one, the bucket's default
        retention applies.

        `if_match` (an ETag, unquoted) makes the write conditional on the current
        object still having that ETag; `if_none_match="*"` on no object existing.
        Either failing raises PreconditionFailed and leaves the object as it was.
        The returned ETag is the MD5 hex of the body.
        """

    async def head_object(self, bucket: str, key: str, *,
                          version_id: str | None = None) -> ObjectInfo:
        """Raises NoSuchKey / NoSuchBucket; with `version_id`: NoSuchVersion, and
        MethodNotAllowed (with the marker headers) when it names a delete marker.
        NoSuchKey for a key whose current version is a delete marker carries the
        marker headers (x-amz-delete-marker, x-amz-version-id)."""

    async def get_object(
        self, bucket: str, key: str, byte_range: tuple[int, int] | None = None, *,
        version_id: str | None = None,
    ) -> tuple[ObjectInfo, ObjectBody]:
        """`byte_range` is inclusive (first, last), already validated against size."""

    async def delete_object(self, bucket: str, key: str, *, version_id: str | None = None,
                            bypass_governance: bool = False,
                            if_match: str | None = None) -> DeleteResult:
        """Idempotent: deleting a missing key succeeds. Raises NoSuchBucket.

        Without `version_id` in a versioned bucket: adds a delete marker. With it: removes
        that version for good (unknown: nothing happens); a locked version raises
        AccessDenied unless it is only under GOVERNANCE retention and `bypass_governance`.
        `if_match` (a stored ETag; without `version_id` only): PreconditionFailed unless the
        key's current object has it, checked by the storage itself at the delete, so a write
        through another gateway node between a caller's check and its delete is never removed
        (S3 and SeaweedFS honour `If-Match` on DELETE; a backend that ignores it deletes
        unconditionally, as before).
        """

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
        """Server-side copy; `meta=None` keeps the source's metadata (COPY directive)."""

    async def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        """Keys > start_after in UTF-8 binary order, rolled up by delimiter."""

    async def get_bucket_owner(self, bucket: str) -> str | None:
        """The access key recorded at creation; None when none was. Raises NoSuchBucket."""

    async def get_bucket_config(self, bucket: str, name: str) -> Any | None:
        """A gateway record of the bucket (ACL, policy, CORS, ...), as the JSON value stored.

        None when unset. Records belong to one life of the bucket: a bucket deleted and
        created again starts with none. Raises NoSuchBucket.
        """

    async def put_bucket_config(self, bucket: str, name: str, value: Any | None) -> None:
        """Replace one gateway record of the bucket (a JSON value); None removes it."""

    async def get_bucket_tags(self, bucket: str) -> dict[str, str] | None:
        """The bucket's tag set; None when it has none. Raises NoSuchBucket."""

    async def put_bucket_tags(self, bucket: str, tags: dict[str, str] | None) -> None:
        """Replace the bucket's tag set (already validated); None deletes it."""

    # -- versions and object lock ----------------------------------------
    async def get_bucket_versioning(self, bucket: str) -> str | None:
        """"Enabled", "Suspended", or None for a bucket never versioned."""

    async def put_bucket_versioning(self, bucket: str, status: str) -> None:
        """Raises InvalidBucketState when suspending a bucket with object lock."""

    async def list_object_versions(
        self, bucket: str, *, prefix: str = "", delimiter: str | None = None,
        key_marker: str | None = None, version_id_marker: str | None = None,
        max_keys: int = 1000,
    ) -> VersionsPage:
        """Versions and markers by key, newest first within a key (hidden keys too)."""

    async def get_object_lock_configuration(self, bucket: str) -> dict[str, Any] | None:
        """{"enabled": True, "rule": {"mode": ..., "days"|"years": n} | None}, or None."""

    async def put_object_lock_configuration(self, bucket: str, config: dict[str, Any]) -> None:
        """Replace the lock configuration (the form above). InvalidBucketState when the
        bucket has no object lock and the backend cannot turn it on."""

    async def put_object_retention(self, bucket: str, key: str, *, version_id: str | None,
                                   mode: str | None, until: datetime | None,
                                   bypass_governance: bool = False) -> None:
        """Set (or with mode None remove) a version's retention. COMPLIANCE is only ever
        extended; GOVERNANCE shortened or removed only with `bypass_governance`: else
        AccessDenied."""

    async def put_object_legal_hold(self, bucket: str, key: str, *, version_id: str | None,
                                    on: bool) -> None: ...

    # -- tagging ---------------------------------------------------------
    async def get_tags(self, bucket: str, key: str, *,
                       version_id: str | None = None) -> dict[str, str]: ...

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str], *,
                       version_id: str | None = None) -> None: ...

    # -- multipart -------------------------------------------------------
    async def create_multipart_upload(self, bucket: str, key: str, meta: ObjectMeta, *,
                                      checksum: UploadChecksum | None = None,
                                      lock: ObjectLock | None = None) -> str:
        """Returns the upload id. `checksum` and `lock` are kept with the upload until it
        ends (`lock` is the completed version's object lock)."""

    async def upload_checksum(self, bucket: str, key: str,
                              upload_id: str) -> UploadChecksum | None:
        """The checksum the upload was created with. Raises NoSuchUpload."""

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
        """Returns the part's ETag (MD5 hex). Raises NoSuchUpload.

        When `body` is a HashedBody and the upload has a checksum algorithm, the
        body's value for that algorithm is kept with the part (PartInfo.checksums).
        """

    async def list_parts(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        *,
        part_number_marker: int = 0,
        max_parts: int = 1000,
    ) -> tuple[list[PartInfo], bool]:
        """(parts, is_truncated). Raises NoSuchUpload."""

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
        """`parts` is [(part_number, etag)], already checked ascending and non-empty.

        `checksum` is the object checksum the front end computed from the parts'
        (for uploads created with a checksum algorithm); it is stored with the part
        table (sizes and part checksums), see get_part_table.

        `if_match` (an ETag) completes only if the key still has that ETag, else
        PreconditionFailed and the upload stays open (the caller aborts it).

        Raises InvalidPart when a part is missing or its ETag differs,
        EntityTooSmall when a part other than the last is under 5 MiB.
        The ETag is md5(concat(binary part md5s)) + "-N", as S3 computes it.
        """

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Raises NoSuchUpload."""

    async def get_part_table(self, bucket: str, key: str, etag: str) -> PartTable | None:
        """The part table of `key` if the stored object still has ETag `etag`.

        None when there is none (not multipart, recorded before tables were kept,
        or the object changed).
        """

    async def list_multipart_uploads(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str | None = None,
        key_marker: str | None = None,
        upload_id_marker: str | None = None,
        max_uploads: int = 1000,
    ) -> UploadsPage: ...


async def read_body(body: ObjectBody) -> bytes:
    """All the bytes `body` yields; it is closed whatever happens (readers always close)."""
    try:
        return b"".join([chunk async for chunk in body])
    finally:
        await body.close()


MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10000
