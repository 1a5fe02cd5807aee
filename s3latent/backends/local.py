"""The embedded default backend: a local directory.

Layout under the root:

    buckets/<bucket>/.bucket.json            creation time, owner, bucket tags, gateway records
    buckets/<bucket>/<k1>/<k2>/<name>.~o     one object (key "k1/k2/name")
    .s3latent/tmp/                           files being written
    .s3latent/uploads/<upload id>/           a multipart upload: upload.json, part files

Each key component is escaped ('%', '~', NUL and a leading '.' are encoded;
over-long components are shortened with a hash), so a key can never address
anything outside its bucket directory, and "a" and "a/b" can coexist: object
files end in ".~o", which no escaped directory name can. The tree stays
browsable by a person.

An object is ONE file: the data, then its JSON metadata, then the metadata's
length and a magic number (a trailer, so writing never copies the data).
Writes go to a temp file in the same file system, are fsynced, then renamed
over the target (and the directory fsynced): the rename is the commit
point for data and metadata together, so a crash leaves either the old object
or the new one, never a mix. Temp files left by a crash are removed on start.
A multipart object's part table (part sizes, part checksums, the object
checksum) is part of that metadata, so it is committed with the data.
.bucket.json is replaced the same way (temp file, fsync, rename).

Reads answer one version, complete: get_object opens the file once, reads and
checks its trailer there, and the body streams from that same open file, so
the info (ETag, size, checksums, part table) and the bytes always belong to one
version, whatever renames happen meanwhile; the body never reads past that
version's data. The trailer must add up to the file's length; a file whose
trailer does not is corrupt: 500 InternalError, logged with bucket and key.
A write refused for lack of space (ENOSPC, EDQUOT) is InsufficientStorage
(507); the temp file goes and the old object stays. See docs/local-backend.md.

Listings come from a per-bucket sorted key index built lazily by walking the
bucket (keys are stored in each header, so hashed names resolve) and kept
current by this process's writes.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import struct
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import S3Error
from .base import (
    MIN_PART_SIZE,
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

MAGIC = b"S3LO"
_TRAILER = struct.Struct(">I4s")
OBJ_SUFFIX = ".~o"
# Noncurrent versions of "<name>.~o" live in "<name>.~v/<seq:016x>-<vid>.~o" ('~' is
# escaped in key components, so no key's directory can be named like that).
VERSIONS_SUFFIX = ".~v"
# The gateway's own records: never versioned (they would pile up versions and markers).
UNVERSIONED_PREFIX = ".s3latent/"
MAX_COMPONENT = 180
READ_CHUNK = 256 * 1024

log = logging.getLogger(__name__)


def _escape_component(component: str) -> str:
    out = component.replace("%", "%25").replace("~", "%7E").replace("\x00", "%00")
    if out.startswith("."):
        out = "%2E" + out[1:]
    if not out:
        out = "%"
    if len(out.encode()) > MAX_COMPONENT:
        digest = hashlib.sha256(component.encode()).hexdigest()[:24]
        out = out.encode()[:100].decode(errors="ignore").rstrip("%") + "%H" + digest
    return out


def _meta_to_json(meta: ObjectMeta) -> dict[str, Any]:
    return {"content_type": meta.content_type, "metadata": meta.metadata,
            "headers": meta.headers, "tags": meta.tags, "checksums": meta.checksums,
            "internal": meta.internal}


def _meta_from_json(data: dict[str, Any]) -> ObjectMeta:
    return ObjectMeta(content_type=data.get("content_type", "binary/octet-stream"),
                      metadata=dict(data.get("metadata", {})),
                      headers=dict(data.get("headers", {})), tags=dict(data.get("tags", {})),
                      checksums=dict(data.get("checksums", {})),
                      internal=dict(data.get("internal", {})))


def _now() -> datetime:
    return datetime.now(UTC)


def _versions_dir(path: Path) -> Path:
    """Where the noncurrent versions of the object file `path` live."""
    return path.with_name(path.name[: -len(OBJ_SUFFIX)] + VERSIONS_SUFFIX)


def _check_version_id(version_id: str) -> None:
    """This backend's IDs are 24 hex digits (or "null"); anything else is malformed."""
    if version_id == "null":
        return
    if len(version_id) != 24 or any(c not in "0123456789abcdef" for c in version_id):
        raise S3Error("InvalidArgument", "Invalid version id specified",
                      ArgumentName="versionId", ArgumentValue=version_id)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_nearest_dir(path: Path) -> None:
    """fsync `path`, or, when a sibling's delete has just pruned it (empty directories go),
    the nearest ancestor still there: the entry is gone with the directory that held it."""
    while True:
        try:
            _fsync_dir(path)
            return
        except FileNotFoundError:
            if path.parent == path:
                return
            path = path.parent


def _rename_into(source: Path, target: Path) -> None:
    """os.replace into a directory a sibling key's delete may prune at any moment (empty
    directories are removed): made again and retried, so a write never fails on it."""
    for attempt in range(8):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
            return
        except FileNotFoundError:
            if attempt == 7 or not source.exists():
                raise


class CorruptObject(Exception):
    """An object (or part) file whose trailer does not describe it: damaged on disk."""


def _read_header(f: BinaryIO) -> dict[str, Any]:
    """The metadata trailer of an open object file, checked against the file's length.

    The data starts at offset 0 and must be exactly header["size"] bytes long:
    a trailer that does not add up is CorruptObject, never a guess at the data.
    """
    total = os.fstat(f.fileno()).st_size
    if total < _TRAILER.size:
        raise CorruptObject(f"file of {total} bytes has no trailer")
    f.seek(total - _TRAILER.size)
    length, magic = _TRAILER.unpack(f.read(_TRAILER.size))
    if magic != MAGIC:
        raise CorruptObject("no s3latent trailer (bad magic)")
    if length > total - _TRAILER.size:
        raise CorruptObject(f"trailer claims {length} bytes of metadata in a file of {total}")
    f.seek(total - _TRAILER.size - length)
    try:
        header = json.loads(f.read(length))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptObject(f"unreadable metadata: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptObject("metadata is not an object")
    size = header.get("size")
    if not isinstance(size, int) or size + length + _TRAILER.size != total:
        raise CorruptObject(f"metadata says {size!r} data bytes, the file holds "
                            f"{total - length - _TRAILER.size}")
    return header


def _info_from_header(header: dict[str, Any]) -> ObjectInfo:
    try:
        table = header.get("part_table")
        return ObjectInfo(header["key"], header["size"], header["etag"],
                          datetime.fromisoformat(header["mtime"]),
                          _meta_from_json(header["meta"]), parts_count=header.get("parts"),
                          part_table=PartTable.from_json(table) if table else None,
                          version_id=header.get("vid"),
                          lock=ObjectLock.from_json(header.get("lock")))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptObject(f"metadata lacks or mangles a field: {exc!r}") from None


def _corrupt(what: str, exc: CorruptObject) -> S3Error:
    """Log a damaged stored file with what it holds; the client gets a 500 that says so."""
    log.error("stored %s is corrupt: %s", what, exc)
    return S3Error("InternalError", "The stored object is corrupt; it cannot be read. "
                   "The gateway's log names it.")


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _check_space(exc: OSError, what: str) -> None:
    """Raise InsufficientStorage if the file system refused a write for lack of space.

    Otherwise return, and the caller re-raises `exc` (a 500 InternalError).
    """
    if exc.errno in _NO_SPACE:
        log.error("out of space writing %s: %s", what, exc)
        raise S3Error("InsufficientStorage") from exc


class _Writer:
    """A temp file that becomes an object file on commit.

    A write the file system refuses for lack of space (ENOSPC, EDQUOT) raises
    InsufficientStorage; the caller aborts, so the old object stays as it was.
    """

    def __init__(self, tmp_dir: Path, what: str) -> None:
        self.path = tmp_dir / f"{secrets.token_hex(12)}.tmp"
        self.what = what
        try:
            self.file = open(self.path, "wb")  # closed by commit/abort
        except OSError as exc:
            _check_space(exc, what)
            raise
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, chunk: bytes, hash_it: bool = True) -> None:
        if hash_it:
            self.md5.update(chunk)
        try:
            self.file.write(chunk)
        except OSError as exc:
            _check_space(exc, self.what)
            raise
        self.size += len(chunk)

    def commit(self, header: dict[str, Any], target: Path) -> None:
        """Append the metadata trailer, fsync, rename into place: the commit point."""
        encoded = json.dumps(header, separators=(",", ":")).encode()
        try:
            self.file.write(encoded + _TRAILER.pack(len(encoded), MAGIC))
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            _rename_into(self.path, target)
        except OSError as exc:
            _check_space(exc, self.what)
            raise
        _fsync_dir(target.parent)

    def abort(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # flushing the buffer failed (no space): the file goes anyway
        finally:
            self.path.unlink(missing_ok=True)


class _LocalBody:
    """A byte range of an object file that is already open.

    The file was opened, and its trailer read, by get_object: the body is the
    data of that very version, whatever renames happen to the path meanwhile
    (the open file keeps the replaced inode alive). close() releases it; readers
    always call it (also on a client that leaves mid-body).
    """

    def __init__(self, file: BinaryIO, offset: int, length: int, what: str) -> None:
        self._file: BinaryIO | None = file
        self._offset, self._length, self._what = offset, length, what

    async def __aiter__(self) -> AsyncIterator[bytes]:
        file = self._file
        if file is None:
            raise ValueError("body already closed")
        await asyncio.to_thread(file.seek, self._offset)
        left = self._length
        while left > 0:
            chunk = await asyncio.to_thread(file.read, min(READ_CHUNK, left))
            if not chunk:  # the file was validated on open: only outside damage gets here
                raise _corrupt(self._what, CorruptObject(
                    f"ended {left} bytes early while being read"))
            left -= len(chunk)
            yield chunk

    async def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            # A read still running in a thread holds the buffered file's lock: close waits.
            await asyncio.to_thread(file.close)


class LocalBackend:
    """See the module docstring."""

    # complete_multipart_upload(replace_version=...) exists: a converter may rewrite a
    # version in place, keeping its ID (docs/versioning-design.md §3, local backend).
    REPLACES_VERSIONS = True

    def __init__(self, root: str | Path, *, min_part_size: int = MIN_PART_SIZE) -> None:
        self.root = Path(root).resolve()
        self.name = f"file://{self.root}"
        self.min_part_size = min_part_size
        self._buckets_dir = self.root / "buckets"
        self._tmp = self.root / ".s3latent" / "tmp"
        self._uploads = self.root / ".s3latent" / "uploads"
        self._index: dict[str, list[str]] = {}
        self._index_lock = asyncio.Lock()
        self._key_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._bucket_locks: dict[str, asyncio.Lock] = {}
        # Per bucket, from .bucket.json (this process is its only writer).
        self._versioning: dict[str, str | None] = {}
        self._lock_config: dict[str, dict[str, Any] | None] = {}

    # -- paths -------------------------------------------------------------
    def _bucket_dir(self, bucket: str) -> Path:
        return self._buckets_dir / _escape_component(bucket)

    def _object_path(self, bucket: str, key: str) -> Path:
        parts = key.split("/")
        escaped = [_escape_component(p) for p in parts]
        path = self._bucket_dir(bucket).joinpath(*escaped[:-1], escaped[-1] + OBJ_SUFFIX)
        # Escaping makes escape impossible; this check keeps it so.
        if not path.resolve().is_relative_to(self._bucket_dir(bucket).resolve()):
            raise S3Error("InvalidArgument", "The object key is not allowed.")
        return path

    async def start(self) -> None:
        def prepare() -> None:
            for d in (self._buckets_dir, self._tmp, self._uploads):
                d.mkdir(parents=True, exist_ok=True)
            for leftover in self._tmp.iterdir():  # a crash mid-write left these
                leftover.unlink(missing_ok=True)

        await asyncio.to_thread(prepare)

    async def close(self) -> None:
        return None

    def _lock(self, bucket: str, key: str) -> asyncio.Lock:
        return self._key_locks.setdefault((bucket, key), asyncio.Lock())

    # -- buckets -------------------------------------------------------------
    async def list_buckets(self) -> list[BucketInfo]:
        def scan() -> list[BucketInfo]:
            out = []
            for d in sorted(self._buckets_dir.iterdir()):
                marker = d / ".bucket.json"
                if marker.exists():
                    info = json.loads(marker.read_text())
                    out.append(BucketInfo(info["name"], datetime.fromisoformat(info["created"])))
            return sorted(out, key=lambda b: b.name)

        return await asyncio.to_thread(scan)

    async def create_bucket(self, bucket: str, owner: str | None = None, *,
                            object_lock: bool = False) -> None:
        def create() -> None:
            d = self._bucket_dir(bucket)
            marker = d / ".bucket.json"
            if marker.exists():
                recorded = json.loads(marker.read_text()).get("owner")
                if recorded is not None and owner is not None and recorded != owner:
                    raise S3Error("BucketAlreadyExists", resource=bucket, BucketName=bucket)
                raise S3Error("BucketAlreadyOwnedByYou", resource=bucket, BucketName=bucket)
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                _check_space(exc, f"bucket {bucket}")
                raise
            record: dict[str, Any] = {"name": bucket, "created": _now().isoformat()}
            if owner is not None:
                record["owner"] = owner
            if object_lock:
                record["versioning"] = "Enabled"
                record["object_lock"] = {"enabled": True, "rule": None}
            self._write_bucket_record(bucket, record)

        async with self._bucket_lock(bucket):
            self._versioning.pop(bucket, None)
            self._lock_config.pop(bucket, None)
            await asyncio.to_thread(create)
        self._index[bucket] = []

    def _bucket_lock(self, bucket: str) -> asyncio.Lock:
        return self._bucket_locks.setdefault(bucket, asyncio.Lock())

    def _write_bucket_record(self, bucket: str, record: dict[str, Any]) -> None:
        """Replace .bucket.json atomically (temp file, fsync, rename, fsync dir)."""
        d = self._bucket_dir(bucket)
        tmp = self._tmp / f"{secrets.token_hex(8)}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(record))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            _check_space(exc, f"the record of bucket {bucket}")
            raise
        os.replace(tmp, d / ".bucket.json")
        _fsync_dir(d)

    def _bucket_record(self, bucket: str) -> dict[str, Any]:
        try:
            return dict(json.loads((self._bucket_dir(bucket) / ".bucket.json").read_text()))
        except FileNotFoundError:
            raise S3Error("NoSuchBucket", resource=bucket, BucketName=bucket) from None

    async def get_bucket_tags(self, bucket: str) -> dict[str, str] | None:
        """From .bucket.json; None when the bucket has no tag set."""
        record = await asyncio.to_thread(self._bucket_record, bucket)
        tags = record.get("tags")
        return dict(tags) if tags is not None else None

    async def put_bucket_tags(self, bucket: str, tags: dict[str, str] | None) -> None:
        """Rewrite .bucket.json atomically with the new tag set (None removes it)."""
        def update() -> None:
            record = self._bucket_record(bucket)
            if tags is None:
                record.pop("tags", None)
            else:
                record["tags"] = dict(tags)
            self._write_bucket_record(bucket, record)

        async with self._bucket_lock(bucket):
            await asyncio.to_thread(update)

    async def get_bucket_owner(self, bucket: str) -> str | None:
        record = await asyncio.to_thread(self._bucket_record, bucket)
        owner = record.get("owner")
        return owner if isinstance(owner, str) else None

    async def get_bucket_config(self, bucket: str, name: str) -> Any | None:
        """From .bucket.json, which dies with the bucket's directory."""
        record = await asyncio.to_thread(self._bucket_record, bucket)
        config = record.get("config")
        return config.get(name) if isinstance(config, dict) else None

    async def put_bucket_config(self, bucket: str, name: str, value: Any | None) -> None:
        """Rewrite .bucket.json atomically with one record replaced (None removes it)."""
        def update() -> None:
            record = self._bucket_record(bucket)
            config = record.get("config")
            config = dict(config) if isinstance(config, dict) else {}
            if value is None:
                config.pop(name, None)
            else:
                config[name] = value
            record["config"] = config
            self._write_bucket_record(bucket, record)

        async with self._bucket_lock(bucket):
            await asyncio.to_thread(update)

    async def head_bucket(self, bucket: str) -> BucketInfo:
        def head() -> BucketInfo:
            marker = self._bucket_dir(bucket) / ".bucket.json"
            try:
                info = json.loads(marker.read_text())
            except FileNotFoundError:
                raise S3Error("NoSuchBucket", resource=bucket, BucketName=bucket) from None
            return BucketInfo(info["name"], datetime.fromisoformat(info["created"]))

        return await asyncio.to_thread(head)

    async def delete_bucket(self, bucket: str) -> None:
        # Under the bucket lock, as every rewrite of .bucket.json is: a record write that
        # read the file must not find its directory gone (a 500) or put it back mid-rmtree.
        async with self._bucket_lock(bucket):
            await self.head_bucket(bucket)
            keys = await self._keys(bucket)
            if keys or await asyncio.to_thread(self._has_versions, bucket):
                raise S3Error("BucketNotEmpty", resource=bucket, BucketName=bucket)
            # As on S3, in-progress multipart uploads do not keep a bucket alive.
            uploads = await self.list_multipart_uploads(bucket)
            for upload in uploads.uploads:
                await asyncio.to_thread(shutil.rmtree, self._upload_dir(upload.upload_id),
                                        True)
            await asyncio.to_thread(shutil.rmtree, self._bucket_dir(bucket))
            self._index.pop(bucket, None)
            self._versioning.pop(bucket, None)
            self._lock_config.pop(bucket, None)

    def _has_versions(self, bucket: str) -> bool:
        """Whether any version or delete marker is stored (a versioned bucket's keys)."""
        for _, _, files in os.walk(self._bucket_dir(bucket)):
            if any(name.endswith(OBJ_SUFFIX) for name in files):
                return True
        return False

    # -- index ---------------------------------------------------------------
    async def _keys(self, bucket: str) -> list[str]:
        keys = self._index.get(bucket)
        if keys is not None:
            return keys
        async with self._index_lock:
            if bucket not in self._index:
                self._index[bucket] = await asyncio.to_thread(self._scan, bucket)
        return self._index[bucket]

    def _scan(self, bucket: str) -> list[str]:
        """Keys whose current version is an object (not a delete marker)."""
        keys = []
        for dirpath, dirs, files in os.walk(self._bucket_dir(bucket)):
            dirs[:] = [d for d in dirs if not d.endswith(VERSIONS_SUFFIX)]
            for name in files:
                if name.endswith(OBJ_SUFFIX):
                    path = os.path.join(dirpath, name)
                    try:
                        with open(path, "rb") as f:
                            header = _read_header(f)
                        if not header.get("dm"):
                            keys.append(header["key"])
                    except FileNotFoundError:
                        continue  # deleted while we walked
                    except (OSError, CorruptObject, KeyError) as exc:
                        log.error("stored object %s is unreadable, left out of listings: %s",
                                  path, exc)
                        continue
        return sorted(keys)

    def _index_add(self, bucket: str, key: str) -> None:
        keys = self._index.get(bucket)
        if keys is None:
            return
        i = bisect.bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            keys.insert(i, key)

    def _index_remove(self, bucket: str, key: str) -> None:
        keys = self._index.get(bucket)
        if keys is None:
            return
        i = bisect.bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            del keys[i]

    # -- objects -------------------------------------------------------------
    def _status(self, bucket: str) -> str | None:
        """The bucket's versioning status (cached; only this process writes it)."""
        if bucket not in self._versioning:
            record = self._bucket_record(bucket)
            self._versioning[bucket] = record.get("versioning")
            self._lock_config[bucket] = record.get("object_lock")
        return self._versioning[bucket]

    def _key_status(self, bucket: str, key: str) -> str | None:
        """As _status, but keys under the gateway's own prefix are never versioned."""
        return None if key.startswith(UNVERSIONED_PREFIX) else self._status(bucket)

    def _version_of(self, bucket: str, header: dict[str, Any]) -> str | None:
        vid = header.get("vid")
        if vid is None and self._status(bucket) is not None:
            return "null"
        return vid

    def _stack(self, bucket: str, path: Path) -> list[tuple[Path, dict[str, Any]]]:
        """Every version of the key behind `path`, newest first (the current one first).

        Leftovers of a crash between linking the current file into the versions directory
        and renaming the new one over it (the same version twice) are removed on sight.
        """
        out: list[tuple[Path, dict[str, Any]]] = []
        current_vid = None
        try:
            with open(path, "rb") as f:
                header = _read_header(f)
            current_vid = header.get("vid") or "null"
            out.append((path, header))
        except (FileNotFoundError, NotADirectoryError):
            pass
        except CorruptObject as exc:
            raise _corrupt(f"object file {path}", exc) from None
        vdir = _versions_dir(path)
        try:
            names = sorted((n for n in os.listdir(vdir) if n.endswith(OBJ_SUFFIX)),
                           reverse=True)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        for name in names:
            vpath = vdir / name
            vid = name[len(name.split("-", 1)[0]) + 1:-len(OBJ_SUFFIX)]
            if vid == current_vid:  # linked, then the write crashed (or a Suspended leftover)
                vpath.unlink(missing_ok=True)
                continue
            try:
                with open(vpath, "rb") as f:
                    out.append((vpath, _read_header(f)))
            except FileNotFoundError:
                continue
            except CorruptObject as exc:
                raise _corrupt(f"object version file {vpath}", exc) from None
        return out

    def _find(self, bucket: str, key: str, version_id: str
              ) -> tuple[Path, dict[str, Any], bool]:
        """(file, header, is current) of one version; NoSuchVersion if there is none."""
        _check_version_id(version_id)
        path = self._object_path(bucket, key)
        self._bucket_record(bucket)  # NoSuchBucket first
        for i, (vpath, header) in enumerate(self._stack(bucket, path)):
            if (header.get("vid") or "null") == version_id:
                return vpath, header, i == 0
        raise S3Error("NoSuchVersion", resource=f"/{bucket}/{key}", Key=key,
                      VersionId=version_id)

    def _open(self, bucket: str, key: str, version_id: str | None = None
              ) -> tuple[ObjectInfo, BinaryIO]:
        """Open the object file and read its trailer: the info and data of ONE version.

        The caller owns the returned file and must close it.
        """
        if version_id is not None:
            path, header, _ = self._find(bucket, key, version_id)
            if header.get("dm"):
                raise S3Error("MethodNotAllowed", Method="GET", ResourceType="DeleteMarker",
                              headers=marker_headers(version_id, datetime.fromisoformat(
                                  header["mtime"])))
        else:
            path = self._object_path(bucket, key)
        try:
            f: BinaryIO = open(path, "rb")  # closed by the caller, or below on error
        except FileNotFoundError:
            if not (self._bucket_dir(bucket) / ".bucket.json").exists():
                raise S3Error("NoSuchBucket", resource=bucket, BucketName=bucket) from None
            if version_id is not None:  # deleted meanwhile
                raise S3Error("NoSuchVersion", Key=key, VersionId=version_id) from None
            raise S3Error("NoSuchKey", resource=f"/{bucket}/{key}", Key=key) from None
        except NotADirectoryError:
            raise S3Error("NoSuchKey", resource=f"/{bucket}/{key}", Key=key) from None
        try:
            header = _read_header(f)
            info = _info_from_header(header)
            info.version_id = self._version_of(bucket, header)
            if header.get("dm"):
                f.close()
                raise S3Error("NoSuchKey", resource=f"/{bucket}/{key}", Key=key,
                              headers=marker_headers(info.version_id or "null"))
            return info, f
        except CorruptObject as exc:
            f.close()
            raise _corrupt(f"object {bucket}/{key!r} ({path})", exc) from None
        except BaseException:
            f.close()
            raise

    def _read_info(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
        info, f = self._open(bucket, key, version_id)
        f.close()
        return info

    async def head_object(self, bucket: str, key: str, *,
                          version_id: str | None = None) -> ObjectInfo:
        return await asyncio.to_thread(self._read_info, bucket, key, version_id)

    async def get_object(self, bucket: str, key: str,
                         byte_range: tuple[int, int] | None = None, *,
                         version_id: str | None = None) -> tuple[ObjectInfo, _LocalBody]:
        """Info and body from one open of the file, so they always describe one version."""
        args = (bucket, key) if version_id is None else (bucket, key, version_id)
        info, f = await asyncio.to_thread(self._open, *args)
        first, last = byte_range if byte_range is not None else (0, info.size - 1)
        if byte_range is not None and last >= info.size:
            # The caller sized the range from an earlier HEAD; clip it to this version
            # (the front end compares ETags and answers InvalidRange itself).
            last = info.size - 1
        return info, _LocalBody(f, first, max(0, last - first + 1), f"object {bucket}/{key!r}")

    async def _receive(self, body: AsyncIterable[bytes], what: str) -> _Writer:
        writer = await asyncio.to_thread(_Writer, self._tmp, what)
        hashed = isinstance(body, HashedBody)
        try:
            async for chunk in body:
                if chunk:
                    await asyncio.to_thread(writer.write, chunk, not hashed)
            if hashed:
                writer.md5 = _FixedDigest(body.md5_hex)  # type: ignore[assignment,attr-defined]
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
        return writer

    def _new_lock(self, bucket: str, key: str, lock: ObjectLock | None) -> ObjectLock | None:
        """The lock a new version gets: the one asked for, else the bucket's default."""
        self._status(bucket)
        config = self._lock_config.get(bucket)
        if key.startswith(UNVERSIONED_PREFIX):
            return None
        if lock is not None and (lock.mode or lock.legal_hold):
            if not config:
                raise S3Error("InvalidRequest", "Bucket is missing ObjectLockConfiguration")
            return lock
        rule = (config or {}).get("rule")
        if not rule:
            return None
        now = _now()
        until = now + timedelta(days=int(rule["days"])) if rule.get("days") else \
            now.replace(year=now.year + int(rule["years"]))
        return ObjectLock(rule["mode"], until)

    def _commit(self, bucket: str, key: str, writer: _Writer, info: ObjectInfo,
                marker: bool = False) -> None:
        """Commit `writer` as the key's new current version, as the bucket's versioning
        status says: replace (never versioned), add on top (Enabled), or replace the
        `null` version wherever it is (Suspended). Sets info.version_id."""
        path = self._object_path(bucket, key)
        status = self._key_status(bucket, key)
        header = self._header(info)
        if marker:
            header["dm"] = True
        if status is None:
            info.version_id = None
            writer.commit(header, path)
            return
        stack = self._stack(bucket, path)
        seq = 1 + max([int(h.get("seq", 0)) for _, h in stack], default=0)
        vid = f"{seq:016x}{secrets.token_hex(4)}" if status == "Enabled" else "null"
        header["seq"], header["vid"], info.version_id = seq, vid, vid
        current = stack[0] if stack and stack[0][0] == path else None
        current_vid = (current[1].get("vid") or "null") if current else None
        if current is not None and not (status == "Suspended" and current_vid == "null"):
            vdir = _versions_dir(path)
            vdir.mkdir(exist_ok=True)
            os.link(path, vdir / f"{int(current[1].get('seq', 0)):016x}-{current_vid}"
                    f"{OBJ_SUFFIX}")
            _fsync_dir(vdir)
        writer.commit(header, path)
        if status == "Suspended":
            for vpath, old in stack[1:]:
                if (old.get("vid") or "null") == "null":
                    vpath.unlink(missing_ok=True)

    async def put_object(self, bucket: str, key: str, body: AsyncIterable[bytes],
                         meta: ObjectMeta, *, size: int | None = None,
                         if_match: str | None = None,
                         if_none_match: str | None = None,
                         lock: ObjectLock | None = None) -> ObjectInfo:
        await self.head_bucket(bucket)
        self._object_path(bucket, key)
        new_lock = await asyncio.to_thread(self._new_lock, bucket, key, lock)
        writer = await self._receive(body, f"object {bucket}/{key!r}")
        try:
            if size is not None and writer.size != size:
                raise S3Error("IncompleteBody")
            async with self._lock(bucket, key):
                await self._check_conditions(bucket, key, if_match, if_none_match)
                info = ObjectInfo(key, writer.size, writer.md5.hexdigest(), _now(), meta,
                                  lock=new_lock)
                await asyncio.to_thread(self._commit, bucket, key, writer, info)
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
        self._index_add(bucket, key)
        return info

    async def _check_conditions(self, bucket: str, key: str, if_match: str | None,
                                if_none_match: str | None) -> None:
        if if_match is None and if_none_match is None:
            return
        try:
            current: ObjectInfo | None = await self.head_object(bucket, key)
        except S3Error as exc:
            if exc.code != "NoSuchKey":
                raise
            current = None
        if if_none_match is not None and current is not None:
            raise S3Error("PreconditionFailed", Condition="If-None-Match")
        if if_match is not None:
            if current is None:
                raise S3Error("NoSuchKey", Key=key)
            if if_match.strip('"') not in (current.etag, "*"):
                raise S3Error("PreconditionFailed", Condition="If-Match")

    @staticmethod
    def _header(info: ObjectInfo) -> dict[str, Any]:
        header = {"key": info.key, "size": info.size, "etag": info.etag,
                  "mtime": info.last_modified.isoformat(), "parts": info.parts_count,
                  "meta": _meta_to_json(info.meta)}
        if info.part_table is not None:
            header["part_table"] = info.part_table.to_json()
        if info.lock is not None:
            header["lock"] = info.lock.to_json()
        return header

    def _remove_file(self, bucket: str, path: Path) -> None:
        """Unlink an object file and the directories the key left empty, up to the bucket."""
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        _fsync_nearest_dir(path.parent)
        parent, top = path.parent, self._bucket_dir(bucket)
        while parent != top:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def _delete_version(self, bucket: str, key: str, version_id: str,
                        bypass: bool) -> DeleteResult:
        try:
            vpath, header, is_current = self._find(bucket, key, version_id)
        except S3Error as exc:
            if exc.code == "NoSuchVersion":
                return DeleteResult(version_id)  # S3: deleting an unknown version succeeds
            raise
        lock = ObjectLock.from_json(header.get("lock"))
        if lock is not None:
            if lock.legal_hold:
                raise S3Error("AccessDenied", "The object is under a legal hold.")
            if lock.retained(_now()) and (lock.mode != "GOVERNANCE" or not bypass):
                raise S3Error("AccessDenied", "The object is protected by object lock "
                              "retention until " + str(lock.retain_until))
        path = self._object_path(bucket, key)
        if is_current:
            stack = self._stack(bucket, path)
            older = stack[1][0] if len(stack) > 1 else None
            if older is not None:
                os.replace(older, path)
                _fsync_dir(path.parent)
            else:
                self._remove_file(bucket, path)
        else:
            self._remove_file(bucket, vpath)
        return DeleteResult(version_id, bool(header.get("dm")))

    def _current_is_live(self, bucket: str, key: str) -> bool:
        try:
            self._read_info(bucket, key)
            return True
        except S3Error:
            return False

    async def delete_object(self, bucket: str, key: str, *, version_id: str | None = None,
                            bypass_governance: bool = False,
                            if_match: str | None = None) -> DeleteResult:
        await self.head_bucket(bucket)
        path = self._object_path(bucket, key)
        status = await asyncio.to_thread(self._key_status, bucket, key)

        def remove() -> DeleteResult:
            if if_match is not None and version_id is None:
                try:
                    current = self._read_info(bucket, key)
                except S3Error as exc:
                    if exc.code not in ("NoSuchKey", "MethodNotAllowed"):
                        raise
                    return DeleteResult()  # nothing there: as an unconditional delete
                if current.etag != if_match.strip().strip('"'):
                    raise S3Error("PreconditionFailed", Condition="If-Match")
            if version_id is not None and status is None and \
                    not _versions_dir(path).exists():
                _check_version_id(version_id)
                if version_id == "null":
                    self._remove_file(bucket, path)
                return DeleteResult(version_id if version_id == "null" else None)
            if version_id is not None:
                return self._delete_version(bucket, key, version_id, bypass_governance)
            if status is None:
                self._remove_file(bucket, path)
                return DeleteResult()
            writer = _Writer(self._tmp, f"delete marker {bucket}/{key!r}")
            try:
                info = ObjectInfo(key, 0, "d41d8cd98f00b204e9800998ecf8427e", _now(),
                                  ObjectMeta())
                self._commit(bucket, key, writer, info, marker=True)
            except BaseException:
                writer.abort()
                raise
            return DeleteResult(info.version_id, True)

        async with self._lock(bucket, key):
            result = await asyncio.to_thread(remove)
            live = await asyncio.to_thread(self._current_is_live, bucket, key)
        if live:
            self._index_add(bucket, key)
        else:
            self._index_remove(bucket, key)
        return result

    async def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                          meta: ObjectMeta | None, *, src_version_id: str | None = None,
                          lock: ObjectLock | None = None) -> ObjectInfo:
        await self.head_bucket(dst_bucket)
        new_lock = await asyncio.to_thread(self._new_lock, dst_bucket, dst_key, lock)
        info, body = await self.get_object(src_bucket, src_key, version_id=src_version_id)
        new_meta = meta if meta is not None else info.meta
        try:
            writer = await self._receive(body, f"object {dst_bucket}/{dst_key!r}")
        finally:
            await body.close()
        try:
            copied = ObjectInfo(dst_key, writer.size, info.etag, _now(), new_meta,
                                parts_count=info.parts_count, part_table=info.part_table,
                                lock=new_lock)
            async with self._lock(dst_bucket, dst_key):
                await asyncio.to_thread(self._commit, dst_bucket, dst_key, writer, copied)
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
        self._index_add(dst_bucket, dst_key)
        return copied

    # -- versions and object lock ----------------------------------------------
    async def get_bucket_versioning(self, bucket: str) -> str | None:
        await self.head_bucket(bucket)
        return await asyncio.to_thread(self._status, bucket)

    async def put_bucket_versioning(self, bucket: str, status: str) -> None:
        if status not in ("Enabled", "Suspended"):
            raise S3Error("MalformedXML")

        def update() -> None:
            record = self._bucket_record(bucket)
            if status == "Suspended" and record.get("object_lock"):
                raise S3Error("InvalidBucketState", "An Object Lock configuration is present "
                              "on this bucket, so the versioning state cannot be changed.")
            record["versioning"] = status
            self._write_bucket_record(bucket, record)
            self._versioning[bucket] = status

        async with self._bucket_lock(bucket):
            await asyncio.to_thread(update)

    async def get_object_lock_configuration(self, bucket: str) -> dict[str, Any] | None:
        await self.head_bucket(bucket)
        await asyncio.to_thread(self._status, bucket)
        config = self._lock_config.get(bucket)
        return dict(config) if config else None

    async def put_object_lock_configuration(self, bucket: str, config: dict[str, Any]) -> None:
        """Also on an existing bucket with versioning Enabled (as AWS allows since 2023)."""
        def update() -> None:
            record = self._bucket_record(bucket)
            if not record.get("object_lock") and record.get("versioning") != "Enabled":
                raise S3Error("InvalidBucketState", "Versioning must be 'Enabled' on the "
                              "bucket to apply a Object Lock configuration")
            record["object_lock"] = config
            self._write_bucket_record(bucket, record)
            self._lock_config[bucket] = config

        async with self._bucket_lock(bucket):
            await asyncio.to_thread(update)

    def _rewrite(self, bucket: str, key: str, version_id: str | None,
                 change: Callable[[ObjectInfo], None]) -> None:
        """Rewrite one version's file with changed metadata: same data, ID and mtime."""
        if version_id is not None:
            path, header, _ = self._find(bucket, key, version_id)
            if header.get("dm"):
                raise S3Error("MethodNotAllowed", Method="PUT", ResourceType="DeleteMarker",
                              headers=marker_headers(version_id))
        else:
            path = self._object_path(bucket, key)
            self._read_info(bucket, key)  # NoSuchKey, markers
        with open(path, "rb") as f:
            try:
                header = _read_header(f)
            except CorruptObject as exc:
                raise _corrupt(f"object {bucket}/{key!r}", exc) from None
            info = _info_from_header(header)
            change(info)
            writer = _Writer(self._tmp, f"object {bucket}/{key!r}")
            try:
                f.seek(0)
                left = info.size
                while left:
                    chunk = f.read(min(READ_CHUNK, left))
                    if not chunk:
                        raise _corrupt(f"object {bucket}/{key!r}", CorruptObject("short"))
                    writer.write(chunk, hash_it=False)
                    left -= len(chunk)
                new = self._header(info)
                for name in ("vid", "seq", "dm"):
                    if name in header:
                        new[name] = header[name]
                if info.lock is None:
                    new.pop("lock", None)
                writer.commit(new, path)
            except BaseException:
                writer.abort()
                raise

    async def put_object_retention(self, bucket: str, key: str, *, version_id: str | None,
                                   mode: str | None, until: datetime | None,
                                   bypass_governance: bool = False) -> None:
        await self.head_bucket(bucket)
        if not await self.get_object_lock_configuration(bucket):
            raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")

        def change(info: ObjectInfo) -> None:
            old = info.lock or ObjectLock()
            if old.retained(_now()):
                # Shorter, removed, or another mode: GOVERNANCE needs the bypass for any
                # of them, COMPLIANCE allows none.
                weaker = mode is None or until is None or mode != old.mode or \
                    until < (old.retain_until or until)
                if weaker and (old.mode == "COMPLIANCE" or not bypass_governance):
                    raise S3Error("AccessDenied", "Access Denied because object protected by "
                                  "object lock.")
            info.lock = ObjectLock(mode, until if mode else None, old.legal_hold)
            if info.lock.mode is None and not info.lock.legal_hold:
                info.lock = None

        async with self._lock(bucket, key):
            await asyncio.to_thread(self._rewrite, bucket, key, version_id, change)

    async def put_object_legal_hold(self, bucket: str, key: str, *, version_id: str | None,
                                    on: bool) -> None:
        await self.head_bucket(bucket)
        if not await self.get_object_lock_configuration(bucket):
            raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")

        def change(info: ObjectInfo) -> None:
            old = info.lock or ObjectLock()
            info.lock = ObjectLock(old.mode, old.retain_until, on)
            if info.lock.mode is None and not on:
                info.lock = None

        async with self._lock(bucket, key):
            await asyncio.to_thread(self._rewrite, bucket, key, version_id, change)

    async def list_object_versions(self, bucket: str, *, prefix: str = "",
                                   delimiter: str | None = None,
                                   key_marker: str | None = None,
                                   version_id_marker: str | None = None,
                                   max_keys: int = 1000) -> VersionsPage:
        """Walks the bucket (the key index knows current versions only): a cost that grows
        with the bucket, acceptable for the embedded backend."""
        await self.head_bucket(bucket)
        if version_id_marker is not None and version_id_marker != "null":
            _check_version_id(version_id_marker)

        def scan() -> list[tuple[str, list[dict[str, Any]]]]:
            paths: dict[str, Path] = {}
            for dirpath, dirs, files in os.walk(self._bucket_dir(bucket)):
                dirs[:] = [d for d in dirs if not d.endswith(VERSIONS_SUFFIX)]
                for name in files:
                    if name.endswith(OBJ_SUFFIX):
                        path = Path(dirpath) / name
                        try:
                            with open(path, "rb") as f:
                                paths[_read_header(f)["key"]] = path
                        except (OSError, CorruptObject, KeyError) as exc:
                            log.error("stored object %s is unreadable, left out of "
                                      "listings: %s", path, exc)
                for d in list(os.listdir(dirpath)):
                    if d.endswith(VERSIONS_SUFFIX):  # versions of a key with no current
                        base = Path(dirpath) / (d[:-len(VERSIONS_SUFFIX)] + OBJ_SUFFIX)
                        if not base.exists():
                            for name in sorted(os.listdir(Path(dirpath) / d)):
                                try:
                                    with open(Path(dirpath) / d / name, "rb") as f:
                                        paths.setdefault(_read_header(f)["key"], base)
                                except (OSError, CorruptObject, KeyError):
                                    continue
            out = []
            for key in sorted(k for k in paths if k.startswith(prefix)):
                out.append((key, [h for _, h in self._stack(bucket, paths[key])]))
            return out

        keys = await asyncio.to_thread(scan)
        entries: list[VersionEntry] = []
        prefixes: list[str] = []
        truncated = False
        skip_in_key = version_id_marker is not None and key_marker is not None
        last: tuple[str, str | None] | None = None
        for key, versions in keys:
            if key_marker is not None and (key < key_marker or
                                           (key == key_marker and not skip_in_key)):
                continue
            if delimiter:
                pos = key.find(delimiter, len(prefix))
                if pos >= 0:
                    common = key[: pos + len(delimiter)]
                    if (key_marker is not None and common <= key_marker) or \
                            common in prefixes:
                        continue
                    if len(entries) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    prefixes.append(common)
                    last = (common, None)
                    continue
            passed = not (skip_in_key and key == key_marker)
            for i, header in enumerate(versions):
                vid = header.get("vid") or "null"
                if not passed:
                    passed = vid == version_id_marker
                    continue
                if len(entries) + len(prefixes) >= max_keys:
                    truncated = True
                    break
                entries.append(VersionEntry(key, vid, i == 0, bool(header.get("dm")),
                                            int(header["size"]), str(header["etag"]),
                                            datetime.fromisoformat(header["mtime"])))
                last = (key, vid)
            if truncated:
                break
        return VersionsPage(entries, prefixes, truncated,
                            last[0] if truncated and last else None,
                            last[1] if truncated and last else None)

    async def list_objects(self, bucket: str, *, prefix: str = "",
                           delimiter: str | None = None, start_after: str | None = None,
                           max_keys: int = 1000) -> ListPage:
        await self.head_bucket(bucket)
        keys = await self._keys(bucket)
        start = max(prefix, start_after or "")
        i = bisect.bisect_right(keys, start) if start_after and start_after >= prefix \
            else bisect.bisect_left(keys, prefix)
        chosen: list[str] = []
        prefixes: list[str] = []
        truncated = False
        while i < len(keys):
            key = keys[i]
            if not key.startswith(prefix):
                break
            if delimiter:
                pos = key.find(delimiter, len(prefix))
                if pos >= 0:
                    common = key[: pos + len(delimiter)]
                    if start_after is None or common > start_after:
                        if len(chosen) + len(prefixes) >= max_keys:
                            truncated = True
                            break
                        prefixes.append(common)
                    while i < len(keys) and keys[i].startswith(common):
                        i += 1
                    continue
            if len(chosen) + len(prefixes) >= max_keys:
                truncated = True
                break
            chosen.append(key)
            i += 1
        infos = await asyncio.gather(*(self._entry(bucket, k) for k in chosen))
        entries = [e for e in infos if e is not None]
        last = max(chosen[-1:] + prefixes[-1:], default=None)
        return ListPage(entries, prefixes, truncated, last)

    async def _entry(self, bucket: str, key: str) -> ListEntry | None:
        try:
            info = await self.head_object(bucket, key)
        except S3Error:
            return None
        return ListEntry(key, info.size, info.etag, info.last_modified)

    # -- tags ----------------------------------------------------------------
    async def get_tags(self, bucket: str, key: str, *,
                       version_id: str | None = None) -> dict[str, str]:
        return dict((await self.head_object(bucket, key, version_id=version_id)).meta.tags)

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str], *,
                       version_id: str | None = None) -> None:
        """Rewrites the version's file with new tags (same data, ETag, mtime, version)."""
        def change(info: ObjectInfo) -> None:
            info.meta.tags = dict(tags)

        async with self._lock(bucket, key):
            await asyncio.to_thread(self._rewrite, bucket, key, version_id, change)

    # -- multipart -------------------------------------------------------------
    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        return self._uploads / upload_id

    def _upload_record(self, bucket: str, key: str, upload_id: str) -> dict[str, Any]:
        try:
            record = json.loads((self._upload_dir(upload_id) / "upload.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise S3Error("NoSuchUpload", UploadId=upload_id) from None
        if record["bucket"] != bucket or record["key"] != key:
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        return record

    async def create_multipart_upload(self, bucket: str, key: str, meta: ObjectMeta, *,
                                      checksum: UploadChecksum | None = None,
                                      lock: ObjectLock | None = None) -> str:
        await self.head_bucket(bucket)
        self._object_path(bucket, key)  # refuses keys we could not store
        if lock is not None:
            await asyncio.to_thread(self._new_lock, bucket, key, lock)  # lock bucket?
        upload_id = secrets.token_hex(16)

        def create() -> None:
            d = self._upload_dir(upload_id)
            d.mkdir(parents=True)
            record: dict[str, Any] = {"bucket": bucket, "key": key,
                                      "initiated": _now().isoformat(),
                                      "meta": _meta_to_json(meta)}
            if checksum is not None:
                record["checksum"] = {"algorithm": checksum.algorithm, "type": checksum.type}
            if lock is not None:
                record["lock"] = lock.to_json()
            tmp = self._tmp / f"{upload_id}.json.tmp"
            try:
                tmp.write_text(json.dumps(record))
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                shutil.rmtree(d, ignore_errors=True)
                _check_space(exc, f"upload {upload_id} of {bucket}/{key!r}")
                raise
            os.replace(tmp, d / "upload.json")
            _fsync_dir(d)

        try:
            await asyncio.to_thread(create)
        except OSError as exc:  # mkdir of the upload's directory
            _check_space(exc, f"upload {upload_id} of {bucket}/{key!r}")
            raise
        return upload_id

    async def upload_checksum(self, bucket: str, key: str,
                              upload_id: str) -> UploadChecksum | None:
        """From upload.json; raises NoSuchUpload for an unknown upload."""
        record = await asyncio.to_thread(self._upload_record, bucket, key, upload_id)
        return _upload_checksum(record)

    async def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int,
                          body: AsyncIterable[bytes], *, size: int | None = None) -> str:
        record = await asyncio.to_thread(self._upload_record, bucket, key, upload_id)
        checksum = _upload_checksum(record)
        writer = await self._receive(
            body, f"part {part_number} of upload {upload_id} ({bucket}/{key!r})")
        try:
            if size is not None and writer.size != size:
                raise S3Error("IncompleteBody")
            part_meta: dict[str, Any] = {}
            if checksum is not None and isinstance(body, HashedBody):
                value = body.checksums.get(checksum.algorithm)
                if value:
                    part_meta["checksums"] = {checksum.algorithm: value}
            header = {"key": key, "size": writer.size, "etag": writer.md5.hexdigest(),
                      "mtime": _now().isoformat(), "parts": None, "meta": part_meta}
            target = self._upload_dir(upload_id) / f"part-{part_number:05d}"
            # The upload may have been aborted or completed meanwhile.
            await asyncio.to_thread(self._upload_record, bucket, key, upload_id)
            await asyncio.to_thread(writer.commit, header, target)
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
        return header["etag"]

    def _parts(self, upload_id: str) -> list[tuple[PartInfo, Path, int]]:
        out = []
        for path in sorted(self._upload_dir(upload_id).glob("part-*")):
            try:
                with open(path, "rb") as f:
                    header = _read_header(f)
                part = PartInfo(int(path.name[5:]), header["etag"], header["size"],
                                datetime.fromisoformat(header["mtime"]),
                                dict(header.get("meta", {}).get("checksums", {})))
            except FileNotFoundError:
                continue  # replaced or the upload ended meanwhile
            except (CorruptObject, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise _corrupt(f"part {path}", CorruptObject(str(exc))) from None
            out.append((part, path, 0))
        return out

    async def list_parts(self, bucket: str, key: str, upload_id: str, *,
                         part_number_marker: int = 0, max_parts: int = 1000
                         ) -> tuple[list[PartInfo], bool]:
        await asyncio.to_thread(self._upload_record, bucket, key, upload_id)
        parts = [p for p, _, _ in await asyncio.to_thread(self._parts, upload_id)
                 if p.part_number > part_number_marker]
        return parts[:max_parts], len(parts) > max_parts

    async def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                        parts: list[tuple[int, str]], *,
                                        if_match: str | None = None,
                                        checksum: str | None = None,
                                        replace_version: str | None = None) -> ObjectInfo:
        """As the protocol says; with `replace_version` (see REPLACES_VERSIONS) the upload
        takes that version's place instead of adding one: same version ID, place in the
        stack, Last-Modified and lock. Only if that version is the key's current one, has
        ETag `if_match` and is not locked (PreconditionFailed, or AccessDenied when locked);
        one rename, so a crash leaves either the old bytes or the new ones under the ID."""
        record = await asyncio.to_thread(self._upload_record, bucket, key, upload_id)
        stored = {p.part_number: (p, path, off)
                  for p, path, off in await asyncio.to_thread(self._parts, upload_id)}
        chosen = []
        for index, (number, etag) in enumerate(parts):
            found = stored.get(number)
            if found is None or found[0].etag != etag.strip('"'):
                raise S3Error("InvalidPart", UploadId=upload_id, PartNumber=str(number))
            if index < len(parts) - 1 and found[0].size < self.min_part_size:
                raise S3Error("EntityTooSmall", ProposedSize=str(found[0].size),
                              MinSizeAllowed=str(self.min_part_size))
            chosen.append(found)
        digest = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p, _, _ in chosen))
        etag = f"{digest.hexdigest()}-{len(chosen)}"
        meta = _meta_from_json(record["meta"])
        upload_checksum = _upload_checksum(record)
        table = PartTable(
            etag,
            [ObjectPart(p.part_number, p.size, dict(p.checksums)) for p, _, _ in chosen],
            upload_checksum.algorithm if upload_checksum else None,
            upload_checksum.type if upload_checksum else None,
            checksum,
        )

        def assemble(info: ObjectInfo) -> None:
            writer = _Writer(self._tmp, f"object {bucket}/{key!r} (completing {upload_id})")
            try:
                for part, path, _ in chosen:
                    # Read the part file's own trailer again from this open: a part
                    # re-uploaded since it was listed is not the part the client named.
                    with open(path, "rb") as f:
                        try:
                            header = _read_header(f)
                        except CorruptObject as exc:
                            raise _corrupt(f"part {path}", exc) from None
                        if header.get("etag") != part.etag or header["size"] != part.size:
                            raise S3Error("InvalidPart", UploadId=upload_id,
                                          PartNumber=str(part.part_number))
                        f.seek(0)
                        left = part.size
                        while left:
                            chunk = f.read(min(1024 * 1024, left))
                            if not chunk:
                                raise _corrupt(f"part {path}", CorruptObject("ended early"))
                            writer.write(chunk, hash_it=False)
                            left -= len(chunk)
                info.size = writer.size
                if replace_version is None:
                    self._commit(bucket, key, writer, info)
                else:
                    self._commit_in_place(bucket, key, writer, info, replace_version,
                                          if_match)
            except BaseException:
                writer.abort()
                raise
            shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)

        if replace_version is not None and if_match is None:
            raise ValueError("replace_version needs if_match")
        async with self._lock(bucket, key):
            await self._check_conditions(bucket, key, if_match, None)
            lock = None if replace_version is not None else await asyncio.to_thread(
                self._new_lock, bucket, key, ObjectLock.from_json(record.get("lock")))
            info = ObjectInfo(key, 0, etag, _now(), meta, parts_count=len(chosen),
                              part_table=table, lock=lock)
            await asyncio.to_thread(assemble, info)
        self._index_add(bucket, key)
        return info

    def _commit_in_place(self, bucket: str, key: str, writer: _Writer, info: ObjectInfo,
                         version_id: str, if_match: str | None) -> None:
        """Commit `writer` as version `version_id` of `key`, which must be current (caller
        holds the key's lock). Keeps the version's ID, seq, Last-Modified and lock."""
        path = self._object_path(bucket, key)
        if self._key_status(bucket, key) is None:
            raise S3Error("InvalidRequest", "Not a versioned key.")
        vpath, old, current = self._find(bucket, key, version_id)
        if not current or vpath != path or old.get("dm") or \
                (if_match is not None and old.get("etag") != if_match):
            raise S3Error("PreconditionFailed", Condition="If-Match")
        lock = ObjectLock.from_json(old.get("lock"))
        if lock is not None and lock.locked(_now()):
            raise S3Error("AccessDenied", "Access Denied because object protected by "
                          "object lock.")
        info.last_modified = datetime.fromisoformat(old["mtime"])
        info.lock = lock
        header = self._header(info)
        for name in ("vid", "seq"):
            if name in old:
                header[name] = old[name]
        info.version_id = old.get("vid") or "null"
        writer.commit(header, path)

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await asyncio.to_thread(self._upload_record, bucket, key, upload_id)
        await asyncio.to_thread(shutil.rmtree, self._upload_dir(upload_id), True)

    async def get_part_table(self, bucket: str, key: str, etag: str) -> PartTable | None:
        """Kept in the object file's metadata, so it always matches the data."""
        try:
            info = await self.head_object(bucket, key)
        except S3Error:
            return None
        if info.etag != etag:
            return None
        return info.part_table

    async def list_multipart_uploads(self, bucket: str, *, prefix: str = "",
                                     delimiter: str | None = None,
                                     key_marker: str | None = None,
                                     upload_id_marker: str | None = None,
                                     max_uploads: int = 1000) -> UploadsPage:
        await self.head_bucket(bucket)

        def scan() -> list[UploadInfo]:
            found = []
            for d in self._uploads.iterdir():
                try:
                    record = json.loads((d / "upload.json").read_text())
                except (OSError, ValueError):
                    continue
                if record["bucket"] == bucket and record["key"].startswith(prefix):
                    found.append(UploadInfo(record["key"], d.name,
                                            datetime.fromisoformat(record["initiated"])))
            return sorted(found, key=lambda u: (u.key, u.initiated, u.upload_id))

        uploads = await asyncio.to_thread(scan)
        if key_marker:
            uploads = [u for u in uploads if u.key > key_marker or (
                u.key == key_marker and upload_id_marker and u.upload_id > upload_id_marker)]
        prefixes: list[str] = []
        result: list[UploadInfo] = []
        truncated = False
        for u in uploads:
            if delimiter:
                pos = u.key.find(delimiter, len(prefix))
                if pos >= 0:
                    common = u.key[: pos + len(delimiter)]
                    if common not in prefixes:
                        if len(result) + len(prefixes) >= max_uploads:
                            truncated = True
                            break
                        prefixes.append(common)
                    continue
            if len(result) + len(prefixes) >= max_uploads:
                truncated = True
                break
            result.append(u)
        next_key = result[-1].key if truncated and result else None
        next_id = result[-1].upload_id if truncated and result else None
        return UploadsPage(result, prefixes, truncated, next_key, next_id)


def _upload_checksum(record: dict[str, Any]) -> UploadChecksum | None:
    spec = record.get("checksum")
    return UploadChecksum(spec["algorithm"], spec["type"]) if spec else None


class _FixedDigest:
    """Stands in for a hashlib object when the body already computed the MD5."""

    def __init__(self, hex_digest: str) -> None:
        self._hex = hex_digest

    def hexdigest(self) -> str:
        return self._hex
