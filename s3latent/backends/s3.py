"""An S3-compatible store (MinIO, SeaweedFS, AWS) as the backend, via aiobotocore.

Bodies are received whole before they are sent on (memory up to SPOOL_MEMORY,
a temporary file beyond): the front end verifies a client's signature and
checksums only at the end of its stream, and an object must not exist in the
backend until that has passed. The backend verifies what we send with
Content-MD5, so the stored ETag is the MD5 the client expects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from ..s3.errors import ERROR_CODES, S3Error
from .base import (
    MIN_PART_SIZE,
    STORED_HEADERS,
    BucketInfo,
    HashedBody,
    ListEntry,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    PartInfo,
    UploadInfo,
    UploadsPage,
)
from .s3_datapath import DataPath, parse_http_date

log = logging.getLogger(__name__)

SPOOL_MEMORY = 8 * 1024 * 1024
READ_CHUNK = 256 * 1024
# How long a bucket seen to exist is trusted without asking the backend again.
BUCKET_CACHE_TTL = 10.0
# Our own metadata rides in the backend's user metadata under this prefix.
INTERNAL_PREFIX = "s3lx-"
_CHECKSUM_PREFIX = INTERNAL_PREFIX + "cks-"

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
        connect_timeout: float = 3.0,
        read_timeout: float = 60.0,
        max_attempts: int = 4,
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
            retries={"mode": "standard", "max_attempts": max_attempts},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Content-MD5 protects every body we send; a SHA-256 pass over it for the
            # signature would only cost CPU.
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            tcp_keepalive=True,
        )
        self._client: Any = None
        self._exit_stack: Any = None
        self._data = DataPath(endpoint_url, access_key, secret_key, region,
                              max_connections=max_connections, connect_timeout=connect_timeout,
                              read_timeout=read_timeout, max_attempts=max_attempts)
        # Buckets known to exist -> (creation time, when checked).
        self._buckets: dict[str, tuple[datetime, float]] = {}

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
        await self._data.close()
        if self._exit_stack is not None:
            await self._exit_stack.__aexit__(None, None, None)
            self._exit_stack = self._client = None

    async def _call(self, op: str, bucket: str | None = None, key: str | None = None,
                    **params: Any) -> dict[str, Any]:
        if bucket is not None:
            params["Bucket"] = bucket
        if key is not None:
            params["Key"] = key
        try:
            return await getattr(self._client, op)(**params)
        except ClientError as exc:
            raise _translate(exc, op, bucket, key) from exc
        except _UNREACHABLE as exc:
            log.warning("backend %s unreachable during %s: %s", self.name, op, exc)
            raise S3Error(
                "ServiceUnavailable", "The storage backend is unreachable; retry later."
            ) from exc

    # -- buckets ---------------------------------------------------------
    async def list_buckets(self) -> list[BucketInfo]:
        resp = await self._call("list_buckets")
        infos = [BucketInfo(b["Name"], _utc(b.get("CreationDate"))) for b in resp["Buckets"]]
        now = time.monotonic()
        self._buckets = {b.name: (b.created, now) for b in infos}
        return infos

    async def create_bucket(self, bucket: str) -> None:
        try:
            await self._call("create_bucket", bucket)
        except S3Error as exc:
            if exc.code == "BucketAlreadyExists":
                raise S3Error("BucketAlreadyOwnedByYou", resource=bucket) from exc
            raise

    async def head_bucket(self, bucket: str) -> BucketInfo:
        cached = self._buckets.get(bucket)
        if cached is not None and time.monotonic() - cached[1] < BUCKET_CACHE_TTL:
            return BucketInfo(bucket, cached[0])
        for info in await self.list_buckets():
            if info.name == bucket:
                return info
        raise S3Error("NoSuchBucket", resource=bucket, BucketName=bucket)

    async def _require_bucket(self, bucket: str) -> None:
        """Some stores (SeaweedFS) create a bucket on first PUT; S3 says NoSuchBucket."""
        await self.head_bucket(bucket)

    async def _not_found(self, exc: S3Error, bucket: str) -> S3Error:
        """A 404 on an object may really be a missing bucket."""
        if exc.code == "NoSuchKey":
            self._buckets.pop(bucket, None)
            await self.head_bucket(bucket)
        return exc

    async def delete_bucket(self, bucket: str) -> None:
        self._buckets.pop(bucket, None)
        await self.head_bucket(bucket)
        page = await self.list_objects(bucket, max_keys=1)
        if page.entries or page.common_prefixes:
            raise S3Error("BucketNotEmpty", resource=bucket, BucketName=bucket)
        await self._call("delete_bucket", bucket)
        self._buckets.pop(bucket, None)

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
            resp = await self._data.request("PUT", bucket, key, headers=headers,
                                            body=spool.payload())
            etag = _unquote_etag(resp.headers.get("ETag", "")) or spool.md5_hex
            resp.release()
            return ObjectInfo(key, spool.size, etag, datetime.now(UTC), meta)
        finally:
            spool.close()

    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        try:
            resp = await self._data.request("HEAD", bucket, key)
        except S3Error as exc:
            raise await self._not_found(exc, bucket) from None
        resp.release()
        return _info_from_headers(key, resp.headers)

    async def get_object(
        self, bucket: str, key: str, byte_range: tuple[int, int] | None = None
    ) -> tuple[ObjectInfo, _Body]:
        headers = {}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        try:
            resp = await self._data.request("GET", bucket, key, headers=headers)
        except S3Error as exc:
            raise await self._not_found(exc, bucket) from None
        info = _info_from_headers(key, resp.headers)
        content_range = resp.headers.get("Content-Range")
        if byte_range is not None and content_range:
            info.size = int(content_range.rpartition("/")[2])
        return info, _Body(resp)

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._require_bucket(bucket)
        try:
            await self._call("delete_object", bucket, key)
        except S3Error as exc:
            if exc.code != "NoSuchKey":
                raise

    async def copy_object(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        meta: ObjectMeta | None,
    ) -> ObjectInfo:
        await self._require_bucket(dst_bucket)
        params: dict[str, Any] = {"CopySource": {"Bucket": src_bucket, "Key": src_key}}
        if meta is None:
            params["MetadataDirective"] = "COPY"
        else:
            params["MetadataDirective"] = "REPLACE"
            params.update(_meta_params(meta))
            if meta.tags:
                params["TaggingDirective"] = "REPLACE"
                params["Tagging"] = urlencode(meta.tags, quote_via=quote)
        await self._call("copy_object", dst_bucket, dst_key, **params)
        return await self.head_object(dst_bucket, dst_key)

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
            params["StartAfter"] = _just_before(start_after)
            params["MaxKeys"] = min(max_keys + 1, 1000)
        resp = await self._call("list_objects_v2", bucket, **params)
        entries = [
            ListEntry(o["Key"], o["Size"], _unquote_etag(o.get("ETag", "")),
                      _utc(o.get("LastModified")))
            for o in resp.get("Contents", [])
            if not start_after or o["Key"] > start_after
        ]
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
    async def get_tags(self, bucket: str, key: str) -> dict[str, str]:
        resp = await self._call("get_object_tagging", bucket, key)
        return {t["Key"]: t["Value"] for t in resp.get("TagSet", [])}

    async def put_tags(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        if not tags:
            await self._call("delete_object_tagging", bucket, key)
            return
        tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
        await self._call("put_object_tagging", bucket, key, Tagging={"TagSet": tag_set})

    # -- multipart -------------------------------------------------------
    async def create_multipart_upload(self, bucket: str, key: str, meta: ObjectMeta) -> str:
        await self._require_bucket(bucket)
        params = _meta_params(meta)
        if meta.tags:
            params["Tagging"] = urlencode(meta.tags, quote_via=quote)
        resp = await self._call("create_multipart_upload", bucket, key, **params)
        return resp["UploadId"]

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
                "PUT", bucket, key,
                query={"partNumber": str(part_number), "uploadId": upload_id},
                headers={"Content-MD5": spool.content_md5, "Content-Length": str(spool.size)},
                body=spool.payload(),
            )
            resp.release()
            return _unquote_etag(resp.headers.get("ETag", "")) or spool.md5_hex
        finally:
            spool.close()

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
        return parts, bool(resp.get("IsTruncated"))

    async def complete_multipart_upload(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: list[tuple[int, str]],
        *,
        if_match: str | None = None,
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
        guard = {"IfMatch": f'"{if_match}"'} if if_match is not None else {}
        await self._call(
            "complete_multipart_upload",
            bucket,
            key,
            UploadId=upload_id,
            **guard,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": f'"{_unquote_etag(e)}"'} for n, e in parts]
            },
        )
        info = await self.head_object(bucket, key)
        if info.etag != expected:
            log.debug("backend multipart etag %s differs from S3's %s", info.etag, expected)
        return info

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self.list_parts(bucket, key, upload_id, max_parts=1)  # NoSuchUpload if gone
        await self._call("abort_multipart_upload", bucket, key, UploadId=upload_id)

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
            params["KeyMarker"] = key_marker
            if upload_id_marker:
                params["UploadIdMarker"] = upload_id_marker
        resp = await self._call("list_multipart_uploads", bucket, **params)
        uploads = [
            UploadInfo(u["Key"], u["UploadId"], _utc(u.get("Initiated")))
            for u in resp.get("Uploads", [])
        ]
        return UploadsPage(
            uploads,
            [p["Prefix"] for p in resp.get("CommonPrefixes", [])],
            bool(resp.get("IsTruncated")),
            resp.get("NextKeyMarker") or None,
            resp.get("NextUploadIdMarker") or None,
        )


def _just_before(key: str) -> str:
    """A string sorting just below `key`: nothing a client stores lies between them."""
    last = ord(key[-1])
    if last == 0:
        return key[:-1]
    prev = last - 1 if not 0xE000 == last else 0xD7FF
    return key[:-1] + chr(prev) + "\U0010ffff"


def _meta_params(meta: ObjectMeta) -> dict[str, Any]:
    metadata = dict(meta.metadata)
    for algorithm, value in meta.checksums.items():
        metadata[_CHECKSUM_PREFIX + algorithm] = value
    for name, value in meta.internal.items():
        metadata[INTERNAL_PREFIX + name] = value
    params: dict[str, Any] = {"ContentType": meta.content_type, "Metadata": metadata}
    for header, value in meta.headers.items():
        if header in _HEADER_PARAMS:
            params[_HEADER_PARAMS[header]] = value
    return params


def _meta_headers(meta: ObjectMeta) -> dict[str, str]:
    """The PUT headers that store `meta` (the data path's form of _meta_params)."""
    headers = {"Content-Type": meta.content_type}
    metadata = dict(meta.metadata)
    for algorithm, value in meta.checksums.items():
        metadata[_CHECKSUM_PREFIX + algorithm] = value
    for name, value in meta.internal.items():
        metadata[INTERNAL_PREFIX + name] = value
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
        "LastModified": parse_http_date(headers.get("Last-Modified")),
        "PartsCount": headers.get("x-amz-mp-parts-count"),
        "ResponseMetadata": {"HTTPHeaders": {n.lower(): v for n, v in headers.items()}},
    }
    info = _info_from(key, resp)
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


def translate_status(status: int, code: str, message: str | None, op: str,
                     bucket: str | None, key: str | None) -> S3Error:
    """A backend's error answer as the S3Error our client should see."""
    if code in ("", "404", "NotFound") and status == 404:
        code = "NoSuchKey" if key is not None else "NoSuchBucket"
    elif code in ("", "412") and status == 412:
        code = "PreconditionFailed"
    elif code in ("", "304") and status == 304:
        code = "NotModified"
    resource = f"/{bucket}/{key}" if key else (f"/{bucket}" if bucket else None)
    if code in ERROR_CODES and status < 500:
        extra = {"Key": key} if code == "NoSuchKey" and key else {}
        if code == "NoSuchBucket" and bucket:
            extra = {"BucketName": bucket}
        return S3Error(code, message or None, resource=resource, **extra)
    if status in (429, 503) or code in ("SlowDown", "Throttling", "ThrottlingException"):
        return S3Error("SlowDown", resource=resource)
    if status >= 500:
        log.warning("backend error on %s %s/%s: %s %s %s", op, bucket, key, status, code,
                    message)
        return S3Error("ServiceUnavailable", "The storage backend failed; retry later.",
                       resource=resource)
    log.warning("unexpected backend answer on %s: %s %s %s", op, status, code, message)
    return S3Error("InternalError", resource=resource)


def backend_from_url(url: str, access_key: str | None, secret_key: str | None,
                     region: str = "us-east-1") -> Any:
    """`file:///path` or a bare path -> LocalBackend; `http(s)://` -> S3Backend."""
    if url.startswith(("http://", "https://")):
        if not access_key or not secret_key:
            raise ValueError(
                "an S3 backend needs S3LATENT_BACKEND_ACCESS_KEY and S3LATENT_BACKEND_SECRET_KEY"
            )
        return S3Backend(url, access_key, secret_key, region=region)
    from .local import LocalBackend

    path = url[len("file://"):] if url.startswith("file://") else url
    return LocalBackend(os.path.abspath(path))
