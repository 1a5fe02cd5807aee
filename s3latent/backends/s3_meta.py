"""Gateway records an S3 backend cannot hold on the objects themselves.

An S3 object's metadata is fixed when its upload is created, but a multipart
object's part sizes, part checksums and object checksum are known only at
CompleteMultipartUpload, and a bucket has no field for the client that created
it. These records live in one internal bucket of the backend (the *meta
bucket*, hidden from clients), written with the backend's own credentials:

    buckets/<bucket>.json                               {"owner": access key, "generation"}
    buckets/<bucket>/<generation>/<name>.json           {"value": a gateway record (ACL, ...)}
    objects/<bucket>/<sha256(key)>/<etag>.json          part table of that object
    uploads/<sha256(upload id)>/checksum.json           algorithm/type of an upload
    uploads/<sha256(upload id)>/parts/<n>/<etag>/<b64>  a part's checksum (empty object)

Crash safety: every record is one PUT (atomic on S3) and is trusted only when
it matches what the backend holds. A part table is written *before* the
Complete that commits its object and is keyed and checked by the object's
ETag, so once Complete has answered, the table exists, and a table left by a
Complete that never happened describes no stored object (a different object
cannot have the same multipart ETag without having the same parts). A part
checksum record carries the part's ETag and is used only for that ETag. An
owner record is written after the bucket exists; a crash in between leaves a
bucket without a recorded owner, which behaves as before owners were kept.
Records of deleted objects and buckets are removed on a best-effort basis; a
leftover is never used for anything it does not match. Part tables younger than
GRACE_S are left alone by that cleanup: one may belong to a Complete of the
same key that is still between writing its table and committing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import S3Error
from .s3_datapath import DataPath

log = logging.getLogger(__name__)

Call = Callable[..., Awaitable[dict[str, Any]]]
_DELETE_BATCH = 1000
GRACE_S = 600.0


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def object_prefix(bucket: str, key: str | None = None) -> str:
    """Where the part tables of `key` (or of every key of `bucket`) live."""
    return f"objects/{bucket}/" + (f"{_hash(key)}/" if key is not None else "")


def upload_prefix(upload_id: str) -> str:
    """Where the records of one multipart upload live (hashed: ids vary by store)."""
    return f"uploads/{_hash(upload_id)}/"


def part_checksum_key(upload_id: str, part_number: int, etag: str, value: str) -> str:
    """The name that *is* a part checksum record: one LIST reads a thousand of them."""
    encoded = base64.urlsafe_b64encode(base64.b64decode(value)).decode("ascii")
    return f"{upload_prefix(upload_id)}parts/{part_number:05d}/{etag}/{encoded}"


def parse_part_checksum_key(name: str) -> tuple[int, str, str] | None:
    """(part number, part ETag, base64 checksum) from a part checksum record's name."""
    try:
        number, etag, encoded = name.split("/")[-3:]
        value = base64.b64encode(base64.urlsafe_b64decode(encoded)).decode("ascii")
        return int(number), etag, value
    except (ValueError, TypeError):
        return None


class MetaStore:
    """Small JSON and empty records in the meta bucket (see the module docstring)."""

    def __init__(self, bucket: str, call: Call, data: DataPath) -> None:
        self.bucket = bucket
        self._call = call
        self._data = data
        # Whether the meta bucket exists: None until known (a listing or a HEAD tells).
        self.exists: bool | None = None
        self._ensure_lock = asyncio.Lock()

    async def present(self) -> bool:
        """Whether the meta bucket exists (asks the backend once when not yet known)."""
        if self.exists is None:
            try:
                await self._call("head_bucket", self.bucket)
                self.exists = True
            except S3Error as exc:
                if exc.code not in ("NoSuchBucket", "NoSuchKey"):
                    raise
                self.exists = False
        return self.exists

    async def ensure(self) -> None:
        """Create the meta bucket on first use."""
        if self.exists:
            return
        async with self._ensure_lock:
            if self.exists:
                return
            try:
                await self._call("create_bucket", self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            self.exists = True

    async def put(self, key: str, value: dict[str, Any] | None = None) -> None:
        """Write a JSON record (or an empty one when `value` is None)."""
        await self.ensure()
        body = json.dumps(value, separators=(",", ":")).encode() if value is not None else b""
        digest = base64.b64encode(hashlib.md5(body).digest()).decode()
        resp = await self._data.request(
            "PUT", self.bucket, key, body=body,
            headers={"Content-Type": "application/json", "Content-MD5": digest,
                     "Content-Length": str(len(body))})
        resp.release()

    async def get(self, key: str) -> dict[str, Any] | None:
        """A JSON record, or None when there is none (or the meta bucket is missing)."""
        if not await self.present():
            return None
        try:
            resp = await self._data.request("GET", self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                return None
            raise
        try:
            data = await resp.read()
        finally:
            resp.release()
        try:
            value = json.loads(data)
        except ValueError:
            log.warning("meta record %s/%s is not JSON; ignored", self.bucket, key)
            return None
        return value if isinstance(value, dict) else None

    async def delete(self, key: str) -> None:
        """Remove one record; a missing one is fine."""
        if not await self.present():
            return
        try:
            await self._call("delete_object", self.bucket, key)
        except S3Error as exc:
            if exc.code not in ("NoSuchKey", "NoSuchBucket"):
                raise

    async def list(self, prefix: str) -> list[str]:
        """Every record name under `prefix`."""
        return [name for name, _ in await self.list_dated(prefix)]

    async def list_dated(self, prefix: str) -> list[tuple[str, datetime]]:
        """(name, last modified) of every record under `prefix`."""
        if not await self.present():
            return []
        names: list[tuple[str, datetime]] = []
        params: dict[str, Any] = {"Prefix": prefix, "MaxKeys": 1000}
        while True:
            try:
                resp = await self._call("list_objects_v2", self.bucket, **params)
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    return names
                raise
            names.extend((o["Key"], _utc(o.get("LastModified")))
                         for o in resp.get("Contents", []))
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return names
            params["ContinuationToken"] = token

    async def delete_many(self, names: list[str]) -> None:
        """Remove records in DeleteObjects batches."""
        for start in range(0, len(names), _DELETE_BATCH):
            batch = names[start:start + _DELETE_BATCH]
            await self._call("delete_objects", self.bucket,
                             Delete={"Objects": [{"Key": n} for n in batch], "Quiet": True})

    async def delete_prefix(self, prefix: str, *, keep: str | None = None,
                            grace_s: float = 0.0) -> None:
        """Best effort: remove the records under `prefix`, but `keep` and those
        written less than `grace_s` ago."""
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
        try:
            names = [n for n, modified in await self.list_dated(prefix)
                     if n != keep and (not grace_s or modified < cutoff)]
            if names:
                await self.delete_many(names)
        except S3Error as exc:
            log.warning("could not remove meta records under %s: %s", prefix, exc)


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
