"""Object operations: Get/Head/Put/Delete/Copy, DeleteObjects, tagging, ACL reads."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aiohttp import web

from ...backends.base import (
    DeleteResult,
    ObjectBody,
    ObjectInfo,
    ObjectMeta,
    ObjectPart,
    PartTable,
)
from ...errors import S3Error
from ...httpdate import format_http_date, parse_http_date
from ...objects import encryption
from ...objects.writes import LATENT_CONTENT_TYPE
from .. import access, sse, xml
from ..checksums import checksum_type_of
from ..conditions import check_preconditions, parse_range
from ..names import check_bucket_name, check_key, check_new_key
from ..request import (
    S3Request,
    check_tags,
    meta_from_headers,
    verified_body,
)
from . import lifecycle
from .object_lock import bypass_governance, lock_from_headers, lock_headers

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger(__name__)

RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
_DELETE_CONCURRENCY = 32
_MULTIPART_ETAG = re.compile(r"^[0-9a-fA-F]{32}-(\d{1,5})$")


def multipart_count(info: ObjectInfo) -> int | None:
    """How many parts a multipart object has (from the backend or its ETag); None if not."""
    if info.parts_count:
        return info.parts_count
    m = _MULTIPART_ETAG.match(info.etag)
    return int(m.group(1)) if m else None


async def part_table(gw: Gateway, bucket: str, key: str, info: ObjectInfo) -> PartTable | None:
    """The part table of the object `info` describes, if one was kept."""
    if info.part_table is not None and info.part_table.etag == info.etag:
        return info.part_table
    if multipart_count(info) is None:
        return None
    return await gw.store.get_part_table(bucket, key, info.etag)


def object_headers(info: ObjectInfo) -> dict[str, str]:
    """Headers GET and HEAD share (not the length, which depends on the range)."""
    meta = info.meta
    headers = {
        "ETag": f'"{info.etag}"',
        "Last-Modified": format_http_date(info.last_modified),
        "Content-Type": meta.content_type,
        "Accept-Ranges": "bytes",
    }
    for name, value in meta.headers.items():
        headers[name.title()] = value
    for name, value in meta.metadata.items():
        headers[f"x-amz-meta-{name}"] = value
    tag_count = info.tag_count if info.tag_count is not None else len(meta.tags)
    if tag_count:
        headers["x-amz-tagging-count"] = str(tag_count)
    if info.parts_count:
        headers["x-amz-mp-parts-count"] = str(info.parts_count)
    rep = meta.internal.get("rep")
    headers["x-s3latent-representation"] = "latent" if rep in ("latent", "stub") else "plain"
    if info.version_id is not None:
        headers["x-amz-version-id"] = info.version_id
    headers.update(lock_headers(info.lock))
    if rep == "latent":  # a container: which representation it holds (the latent, or AVIF)
        headers["x-s3latent-stored-as"] = ("avif" if meta.internal.get("codec") == "avif"
                                           else "latent")
    return headers


def written_version(version_id: str | None) -> dict[str, str]:
    """x-amz-version-id of a write's answer: none for the `null` version (a Suspended
    bucket), as S3 and SeaweedFS answer and s3-tests expect (design question 12.4)."""
    return {"x-amz-version-id": version_id} if version_id not in (None, "null") else {}


def version_param(req: S3Request) -> str | None:
    """`?versionId=`, if given; an empty one is malformed."""
    version = req.query.get("versionId")
    if version == "":
        raise S3Error("InvalidArgument", "Version id cannot be the empty string",
                      ArgumentName="versionId", ArgumentValue=version)
    return version


def reject_unsupported_write_headers(req: S3Request) -> None:
    """Headers that ask for something we would silently not do get NotImplemented."""
    headers = req.headers
    for name in ("x-amz-website-redirect-location",):
        if name in headers:
            raise S3Error("NotImplemented", f"The {name} header is not supported by s3latent.")
    storage_class = headers.get("x-amz-storage-class")
    if storage_class is not None and storage_class not in (
        "STANDARD",
        "REDUCED_REDUNDANCY",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "DEEP_ARCHIVE",
        "GLACIER_IR",
        "OUTPOSTS",
        "SNOW",
        "EXPRESS_ONEZONE",
    ):
        raise S3Error("InvalidStorageClass", StorageClassRequested=storage_class)


def _read_headers(req: S3Request, info: ObjectInfo, gw: Gateway) -> dict[str, str]:
    headers = object_headers(info)
    state = gw.store.state(req.bucket or "", req.key or "")
    if state:
        headers["x-s3latent-state"] = state
    for param, header in RESPONSE_OVERRIDES.items():
        if param in req.query:
            headers[header] = req.query[param]
    return headers


def object_checksums(info: ObjectInfo, table: PartTable | None) -> dict[str, str]:
    """algorithm -> value of the object's checksum: a PUT's, or a multipart upload's."""
    if info.meta.checksums:
        return dict(info.meta.checksums)
    if table is not None and table.checksum and table.checksum_algorithm:
        return {table.checksum_algorithm: table.checksum}
    return {}


async def _checksum_headers(gw: Gateway, req: S3Request, read: _Read) -> dict[str, str]:
    if (req.header("x-amz-checksum-mode") or "").upper() != "ENABLED":
        return {}
    if read.part is not None:  # a part's own checksum, of the upload's type
        kind = read.table.checksum_type if read.table else None
        out = {f"x-amz-checksum-{a}": v for a, v in read.part.checksums.items()}
        if out and kind:
            out["x-amz-checksum-type"] = kind
        return out
    if read.byte_range is not None:
        return {}
    table = read.table
    if table is None and not read.info.meta.checksums:
        assert req.bucket is not None and req.key is not None
        table = await part_table(gw, req.bucket, req.key, read.info)
    values = object_checksums(read.info, table)
    out = {f"x-amz-checksum-{alg}": value for alg, value in values.items()}
    if out:
        out["x-amz-checksum-type"] = checksum_type_of(next(iter(values.values())))
    return out


@dataclass
class _Read:
    """What a GET/HEAD will send: the object, the byte range, the part asked for."""

    info: ObjectInfo
    byte_range: tuple[int, int] | None = None
    body: ObjectBody | None = None
    part: ObjectPart | None = None
    table: PartTable | None = None
    headers: dict[str, str] = field(default_factory=dict)
    encrypted: sse.Read | None = None


def _part_number_param(req: S3Request) -> int | None:
    raw = req.query.get("partNumber")
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, "
                      "inclusive", ArgumentName="partNumber", ArgumentValue=raw[:100])
    if req.header("Range") is not None:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber "
                      "query parameter.")
    return int(raw)


async def _part_read(gw: Gateway, req: S3Request, info: ObjectInfo, number: int) -> _Read:
    """GET/HEAD ?partNumber=N: the bytes of part N, as a range of the whole object."""
    assert req.bucket is not None and req.key is not None
    count = multipart_count(info)
    if count is None:  # a single PUT is its own (only) part
        if number != 1:
            raise S3Error("InvalidPartNumber")
        return _Read(info)
    table = await part_table(gw, req.bucket, req.key, info)
    headers = {"x-amz-mp-parts-count": str(count)}
    if table is None:
        if count != 1:
            raise S3Error("NotImplemented", "The part layout of this object was not recorded "
                          "(it was completed before s3latent kept part tables).")
        if number != 1:
            raise S3Error("InvalidPartNumber")
        return _Read(info, (0, info.size - 1) if info.size else None, headers=headers)
    start = 0
    for part in table.parts:
        if part.part_number == number:
            if part.size == 0:  # nothing to read: an empty body
                return _Read(info, None, _EmptyBody(), part=part, table=table,
                             headers=headers)
            return _Read(info, (start, start + part.size - 1), part=part, table=table,
                         headers=headers)
        start += part.size
    raise S3Error("InvalidPartNumber")


class _EmptyBody:
    async def __aiter__(self) -> AsyncIterator[bytes]:
        return
        yield b""  # pragma: no cover - makes this an async generator

    async def close(self) -> None:
        return None


async def _resolve_read(gw: Gateway, req: S3Request) -> _Read:
    """Evaluate conditionals and the range; open the body unless it is a HEAD.

    A plain GET opens the object in one backend call; ranged reads, part reads
    and HEAD need the size (or nothing but the metadata) first.
    """
    bucket, key = req.bucket, req.key
    assert bucket is not None and key is not None
    range_header = req.header("Range")
    part_number = _part_number_param(req)
    version = version_param(req)
    pin = {"version_id": version} if version is not None else {}
    sse.refuse_read_headers(req)
    if req.method == "GET" and not range_header and part_number is None:
        info, body = await gw.store.get_object(bucket, key, **pin)
        try:
            await req.check_object(info)
            encrypted = await sse.open_read(gw, req, bucket, key, info)
            if encrypted is None:
                check_preconditions(req.headers, info)
                return _Read(info, None, body)
        except BaseException:
            await body.close()
            raise
        try:
            check_preconditions(req.headers, encrypted.info)
        except BaseException:
            await body.close()
            raise
        body = await sse.decrypt_whole(bucket, key, encrypted, body)
        return _Read(encrypted.info, None, body, headers=dict(encrypted.headers),
                     encrypted=encrypted)
    stored = await gw.store.head_object(bucket, key, **pin)
    await req.check_object(stored)
    if stored.version_id is not None:  # read the very version the HEAD described
        pin = {"version_id": stored.version_id}
    encrypted = await sse.open_read(gw, req, bucket, key, stored)
    info = encrypted.info if encrypted is not None else stored
    check_preconditions(req.headers, info)
    if part_number is not None:
        read = await _part_read(gw, req, info, part_number)
    else:
        read = _Read(info, parse_range(range_header, info.size))
    if encrypted is not None:
        read.encrypted = encrypted
        read.headers.update(encrypted.headers)
    if req.method == "HEAD":
        read.body = None
        return read
    if read.body is not None:  # an empty part
        return read
    byte_range = read.byte_range
    if encrypted is not None:
        read.body = await sse.read_body_of(gw, bucket, key, encrypted, byte_range,
                                           pin.get("version_id"))
        return read
    info2, body = await gw.store.get_object(bucket, key, byte_range, known=info, **pin)
    if info2.etag != info.etag:
        # Replaced between the two calls: evaluate against what we will send.
        try:
            await req.check_object(info2)
            check_preconditions(req.headers, info2)
            if part_number is not None:
                raise S3Error("PreconditionFailed", "The object changed while its part was "
                              "read; retry.", Condition="ETag")
            if byte_range is not None and byte_range[1] >= info2.size:
                raise S3Error("InvalidRange", headers={"Content-Range": f"bytes */{info2.size}"})
        except BaseException:
            await body.close()
            raise
    read.info, read.body = info2, body
    return read


def wants_latent(req: S3Request) -> bool:
    """`?x-s3latent-want=latent` or the header of that name: the latent, as safetensors."""
    want = req.query.get("x-s3latent-want") or req.header("x-s3latent-want") or ""
    if want and want != "latent":
        raise S3Error("InvalidArgument", "x-s3latent-want must be 'latent'.",
                      ArgumentName="x-s3latent-want", ArgumentValue=want)
    return want == "latent"


async def get_latent(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    if req.object_check is not None:  # the latent's info carries no access fields
        await req.check_object(await gw.store.head_object(req.bucket, req.key))
    info, data = await gw.store.latent_safetensors(req.bucket, req.key)
    check_preconditions(req.headers, info)
    headers = object_headers(info)
    headers["x-s3latent-representation"] = "latent"
    if req.method == "HEAD":
        response = web.StreamResponse(headers=headers)
        response.content_length = len(data)
        await response.prepare(req.http)
        await response.write_eof()
        return response
    return web.Response(body=data, headers=headers)


async def get_object(gw: Gateway, req: S3Request) -> web.StreamResponse:
    if wants_latent(req):
        return await get_latent(gw, req)
    read = await _resolve_read(gw, req)
    info, byte_range, body = read.info, read.byte_range, read.body
    headers = _read_headers(req, info, gw)
    headers.update(read.headers)
    headers.update(await _checksum_headers(gw, req, read))
    if version_param(req) is None:
        headers.update(await lifecycle.expiration_headers(gw, req.bucket or "", info))
    if byte_range is None:
        status, length = 200, info.size
        if read.part is not None:  # an empty part
            status, length = 206, 0
    else:
        status, length = 206, byte_range[1] - byte_range[0] + 1
        headers["Content-Range"] = f"bytes {byte_range[0]}-{byte_range[1]}/{info.size}"
    response = web.StreamResponse(status=status, headers=headers)
    if body is None:  # HEAD: the headers of the GET, no body
        response.content_length = length
        await response.prepare(req.http)
        await response.write_eof()
        return response
    response.content_length = length
    sent = 0
    try:
        await response.prepare(req.http)
        async for chunk in body:
            sent += len(chunk)
            await response.write(chunk)
    except (ConnectionError, asyncio.CancelledError):
        log.info("client went away after %d/%d bytes of %s", sent, length, req.resource)
        raise
    except Exception as exc:
        if not response.prepared:
            raise  # nothing sent yet: the client gets the error response
        # The backend failed mid-body (read timeout, dropped connection, damaged file). The
        # status line is out, so no error answer can follow (it would read as object bytes):
        # the client sees the body cut short of its Content-Length (below).
        log.warning("backend failed after %d/%d bytes of %s: %r", sent, length, req.resource, exc)
    finally:
        await body.close()
    if sent != length:
        # Never pretend a short body is complete: the connection must not be reused.
        log.error("backend sent %d of %d bytes for %s", sent, length, req.resource)
        if req.http.transport is not None:
            req.http.transport.close()
        return response
    await response.write_eof()
    return response


async def put_object(gw: Gateway, req: S3Request) -> web.StreamResponse:
    if "x-amz-copy-source" in req.headers:
        return await copy_object(gw, req)
    assert req.bucket is not None and req.key is not None
    check_new_key(req.key)
    reject_unsupported_write_headers(req)
    meta = meta_from_headers(req)
    meta.internal.update(await access.new_object_fields(gw, req, req.bucket))
    lock = lock_from_headers(req)
    encrypt = await sse.for_write(gw, req.bucket, req.headers)
    reader = req.payload()
    body: AsyncIterable[bytes] = verified_body(reader, meta)
    size = reader.decoded_length
    if encrypt is not None:
        refuse_encrypted_latent(meta)
        meta.internal.update(encrypt.fields)
        body = encrypt.body(body, meta=meta)
        size = encryption.ciphertext_size(size) if size is not None else None
    info = await gw.store.put_object(
        req.bucket,
        req.key,
        body,
        meta,
        size=size,
        if_match=_unquoted(req.header("If-Match")),
        if_none_match=req.header("If-None-Match"),
        **({"lock": lock} if lock is not None else {}),
    )
    if encrypt is not None:
        await sse.index_written(gw, req.bucket, req.key, info)
    headers = {"ETag": f'"{sse.etag_of(info)}"'}
    headers.update(written_version(info.version_id))
    headers.update(await lifecycle.expiration_headers(gw, req.bucket, info, meta.tags))
    headers.update(encrypt.headers if encrypt is not None else {})
    headers.update({f"x-amz-checksum-{a}": v for a, v in reader.checksums.items()})
    if reader.checksums:
        headers["x-amz-checksum-type"] = "FULL_OBJECT"
    return web.Response(status=200, headers=headers)


def refuse_encrypted_latent(meta: ObjectMeta) -> None:
    """A latent upload is read by the gateway at write time; it cannot also be encrypted."""
    if meta.content_type.split(";")[0].strip().lower() == LATENT_CONTENT_TYPE:
        raise S3Error("InvalidRequest", "Latent uploads cannot be server-side encrypted.")


def _unquoted(value: str | None) -> str | None:
    return value.strip().strip('"') if value else None


async def delete_object(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    version = version_param(req)
    conditions = _delete_header_conditions(req)
    await gw.store.head_bucket(req.bucket)
    if conditions:
        result = await _delete_if_unchanged(gw, req.bucket, req.key, version, conditions)
    else:
        result = await gw.store.delete_object(req.bucket, req.key, version_id=version,
                                              bypass_governance=bypass_governance(req))
    headers = {}
    if result.version_id is not None:
        headers["x-amz-version-id"] = result.version_id
    if result.delete_marker:
        headers["x-amz-delete-marker"] = "true"
    return web.Response(status=204, headers=headers)


async def _delete_if_unchanged(gw: Gateway, bucket: str, key: str, version: str | None,
                               conditions: dict[str, object]) -> DeleteResult:
    """S3's conditional delete: only while the object is still what the client names (412
    when it differs). Nothing there is a successful no-op, as an unconditional delete is;
    a delete marker that is current matches `If-Match: *` only (it has no ETag, size or
    time of an object)."""
    try:
        return await gw.store.delete_if_unchanged(bucket, key, version_id=version,
                                                  **conditions)  # type: ignore[arg-type]
    except S3Error as exc:
        if exc.code not in ("NoSuchKey", "NoSuchVersion"):
            raise
    if version is None and conditions != {"etag": "*"}:
        try:
            await gw.store.head_object(bucket, key)
        except S3Error as exc:
            if exc.headers.get("x-amz-delete-marker") == "true":
                raise S3Error("PreconditionFailed", Condition="If-Match") from None
    return DeleteResult(version)


def parse_versioned_copy_source(value: str) -> tuple[str, str, str | None]:
    """'/bucket/key' or 'bucket/key', URL-encoded, optionally '?versionId=...'."""
    source, _, query = value.partition("?")
    version = None
    if query:
        if not query.startswith("versionId="):
            raise S3Error("InvalidArgument", "Invalid copy source.")
        version = unquote(query.removeprefix("versionId="))
        if not version:
            raise S3Error("InvalidArgument", "Invalid version id specified",
                          ArgumentName="x-amz-copy-source", ArgumentValue=value)
    source = unquote(source).lstrip("/")
    bucket, sep, key = source.partition("/")
    if not sep or not key or not bucket:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                      "sourcebucket/sourcekey")
    check_bucket_name(bucket)
    check_key(key)
    return bucket, key, version


async def copy_object(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    check_new_key(req.key)
    reject_unsupported_write_headers(req)
    src_bucket, src_key, src_version = parse_versioned_copy_source(
        req.headers["x-amz-copy-source"])
    lock = lock_from_headers(req)
    pin = {"version_id": src_version} if src_version is not None else {}
    source = await gw.store.head_object(src_bucket, src_key, **pin)
    await access.authorize_source(gw, req, src_bucket, src_key, source)
    src_enc = await sse.open_read(gw, req, src_bucket, src_key, source, copy_source=True)
    check_preconditions(req.headers, src_enc.info if src_enc else source,
                        prefix="x-amz-copy-source-")
    fields = await access.new_object_fields(gw, req, req.bucket)
    dst_enc = await sse.for_write(gw, req.bucket, req.headers)
    directive = (req.header("x-amz-metadata-directive") or "COPY").upper()
    tag_directive = (req.header("x-amz-tagging-directive") or "COPY").upper()
    if directive not in ("COPY", "REPLACE") or tag_directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata or tagging directive.")
    meta: ObjectMeta | None = None
    if directive == "REPLACE" or tag_directive == "REPLACE":
        if directive == "REPLACE":
            meta = meta_from_headers(req)
        else:
            meta = ObjectMeta(
                content_type=source.meta.content_type,
                metadata=dict(source.meta.metadata),
                headers=dict(source.meta.headers),
            )
        if tag_directive == "REPLACE":
            meta.tags = meta_from_headers(req).tags
        else:
            meta.tags = await gw.store.get_tags(src_bucket, src_key, **pin)
    elif (src_bucket, src_key) == (req.bucket, req.key) and src_version is None and \
            not req.header("x-amz-storage-class") and not sse.names_encryption(req):
        raise S3Error(
            "InvalidRequest",
            "This copy request is illegal because it is trying to copy an object to itself "
            "without changing the object's metadata, storage class, website redirect location "
            "or encryption attributes.",
        )
    if meta is None and not await access.default_fields(gw, req.bucket, fields):
        # Not the default (the bucket owner's, private): the copy must carry its fields.
        meta = ObjectMeta(content_type=source.meta.content_type,
                          metadata=dict(source.meta.metadata), headers=dict(source.meta.headers),
                          tags=await gw.store.get_tags(src_bucket, src_key, **pin),
                          checksums=dict(source.meta.checksums))
    if meta is not None:
        meta.internal.update(fields)
    extra: dict[str, object] = {}
    if lock is not None:
        extra["lock"] = lock
    if src_enc is not None or dst_enc is not None:
        # Encrypted on either side: the plaintext goes through the gateway (never the
        # ciphertext: the copy has its own data key, or none).
        if meta is None:
            meta = ObjectMeta(content_type=source.meta.content_type,
                              metadata=dict(source.meta.metadata),
                              headers=dict(source.meta.headers),
                              tags=await gw.store.get_tags(src_bucket, src_key, **pin),
                              checksums=dict(source.meta.checksums))
            meta.internal.update(fields)
        info = await _copy_through(gw, req, src_bucket, src_key, source, src_enc, dst_enc,
                                   meta, extra)
    else:
        if src_version is not None:
            extra["src_version_id"] = src_version
        info = await gw.store.copy_object(src_bucket, src_key, req.bucket, req.key, meta,
                                          **extra)  # type: ignore[arg-type]
    body = xml.render("CopyObjectResult", {"LastModified": info.last_modified,
                                           "ETag": f'"{sse.etag_of(info)}"'})
    headers = {}
    if source.version_id is not None:
        headers["x-amz-copy-source-version-id"] = source.version_id
    headers.update(written_version(info.version_id))
    headers.update(dst_enc.headers if dst_enc is not None else {})
    return web.Response(body=body, content_type="application/xml", headers=headers)


def _delete_conditions(entry: dict[str, object]) -> dict[str, object]:
    """A DeleteObjects entry's conditions (ETag, LastModifiedTime, Size): the object is
    deleted only while it still has them (S3's conditional deletes)."""
    raw = {name: xml.text(entry[name]) for name in ("ETag", "LastModifiedTime", "Size")
           if entry.get(name) is not None}
    return _conditions(raw, lambda _name: S3Error("MalformedXML"))


_CONDITION_HEADERS = {"If-Match": "ETag",
                      "x-amz-if-match-last-modified-time": "LastModifiedTime",
                      "x-amz-if-match-size": "Size"}


def _delete_header_conditions(req: S3Request) -> dict[str, object]:
    """DeleteObject's conditional headers, the same conditions as DeleteObjects entries."""
    raw = {name: value for header, name in _CONDITION_HEADERS.items()
           if (value := req.header(header)) is not None}

    def bad(name: str) -> S3Error:
        header = next(h for h, n in _CONDITION_HEADERS.items() if n == name)
        return S3Error("InvalidArgument", f"Invalid {header} header.", ArgumentName=header,
                       ArgumentValue=raw[name])
    return _conditions(raw, bad)


def _conditions(raw: dict[str, str], bad: Callable[[str], S3Error]) -> dict[str, object]:
    conditions: dict[str, object] = {}
    if "ETag" in raw:
        if not raw["ETag"].strip():
            raise bad("ETag")
        conditions["etag"] = raw["ETag"].strip()
    if "LastModifiedTime" in raw:
        text = raw["LastModifiedTime"].strip()
        when = parse_http_date(text)  # the SDKs send an HTTP date here
        if when is None:
            try:
                when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise bad("LastModifiedTime") from exc
        conditions["last_modified"] = when if when.tzinfo else when.replace(tzinfo=UTC)
    if "Size" in raw:
        try:
            conditions["size"] = int(raw["Size"].strip())
        except ValueError as exc:
            raise bad("Size") from exc
        if conditions["size"] < 0:  # type: ignore[operator]
            raise bad("Size")
    return conditions


async def open_copy_source(gw: Gateway, bucket: str, key: str, source: ObjectInfo,
                           src_enc: sse.Read | None, byte_range: tuple[int, int] | None
                           ) -> tuple[ObjectInfo, ObjectBody]:
    """(info as clients see it, plaintext body) of a copy's source: the version HEAD saw."""
    if src_enc is not None:
        body = await sse.read_body_of(gw, bucket, key, src_enc, byte_range, source.version_id)
        return src_enc.info, body
    pin = {"version_id": source.version_id} if source.version_id is not None else {}
    info, body = await gw.store.get_object(bucket, key, byte_range, **pin)
    if info.etag != source.etag:
        await body.close()
        raise S3Error("PreconditionFailed", "The copy source changed while it was read; "
                      "retry.", Condition="ETag")
    return info, body


async def _copy_through(gw: Gateway, req: S3Request, src_bucket: str, src_key: str,
                        source: ObjectInfo, src_enc: sse.Read | None, dst_enc: sse.Write | None,
                        meta: ObjectMeta, extra: dict[str, object]) -> ObjectInfo:
    assert req.bucket is not None and req.key is not None
    info, plain = await open_copy_source(gw, src_bucket, src_key, source, src_enc, None)
    body: AsyncIterable[bytes] = plain
    size = info.size
    if dst_enc is not None:
        refuse_encrypted_latent(meta)
        meta.internal.update(dst_enc.fields)
        body = dst_enc.body(plain, meta=meta)
        size = encryption.ciphertext_size(size)
    try:
        written = await gw.store.put_object(req.bucket, req.key, body, meta, size=size,
                                            **extra)  # type: ignore[arg-type]
    finally:
        await plain.close()
    if dst_enc is not None:
        await sse.index_written(gw, req.bucket, req.key, written)
    return written


async def delete_objects(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    doc = xml.parse(await req.read_small_body(), "Delete")
    objects = xml.as_list(doc.get("Object"))
    if not objects or len(objects) > 1000:
        raise S3Error("MalformedXML")
    quiet = xml.text(doc.get("Quiet")).strip().lower() == "true"
    bypass = bypass_governance(req)
    await gw.store.head_bucket(req.bucket)
    limiter = asyncio.Semaphore(_DELETE_CONCURRENCY)

    async def one(entry: object) -> dict[str, str]:
        if not isinstance(entry, dict) or "Key" not in entry:
            raise S3Error("MalformedXML")
        key = xml.text(entry["Key"])
        result: dict[str, str] = {"Key": key}
        raw_version = entry.get("VersionId")
        version = xml.text(raw_version) if raw_version is not None else None
        if version is not None:
            result["VersionId"] = version
        conditions = _delete_conditions(entry)
        try:
            check_key(key)
            async with limiter:
                await access.refuse_denied_key(gw, req, "s3:DeleteObject", key)
                if conditions:
                    done = await gw.store.delete_if_unchanged(req.bucket, key,
                                                              version_id=version, **conditions)
                else:
                    done = await gw.store.delete_object(req.bucket, key, version_id=version,
                                                        bypass_governance=bypass)
            if done.delete_marker:
                result["DeleteMarker"] = "true"
                if done.version_id is not None:
                    result["DeleteMarkerVersionId"] = done.version_id
        except S3Error as exc:
            result.update({"Code": exc.code, "Message": exc.message, "Error": "1"})
        return result

    results = await asyncio.gather(*(one(entry) for entry in objects))
    deleted, errors = [], []
    for result in results:
        if result.pop("Error", None):
            errors.append(result)
        elif not quiet:
            deleted.append(result)
    body = xml.render("DeleteResult", {"Deleted": deleted or None, "Error": errors or None})
    return web.Response(body=body, content_type="application/xml")


async def get_object_tagging(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    version = version_param(req)
    pin = {"version_id": version} if version is not None else {}
    info = await gw.store.head_object(req.bucket, req.key, **pin)
    await req.check_object(info)
    tags = await gw.store.get_tags(req.bucket, req.key, **pin)
    tag_list = [{"Key": k, "Value": tags[k]} for k in sorted(tags)]
    body = xml.render("Tagging", {"TagSet": {"Tag": tag_list} if tag_list else ""})
    headers = {"x-amz-version-id": info.version_id} if info.version_id is not None else {}
    return web.Response(body=body, content_type="application/xml", headers=headers)


async def put_object_tagging(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    doc = xml.parse(await req.read_small_body(), "Tagging")
    tag_set = doc.get("TagSet") or {}
    if not isinstance(tag_set, dict):
        tag_set = {}
    tags: dict[str, str] = {}
    for tag in xml.as_list(tag_set.get("Tag")):
        if not isinstance(tag, dict) or "Key" not in tag:
            raise S3Error("MalformedXML")
        key = xml.text(tag["Key"])
        if key in tags:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key")
        tags[key] = xml.text(tag.get("Value"))
    check_tags(tags)
    version = version_param(req)
    pin = {"version_id": version} if version is not None else {}
    if req.object_check is not None:
        await req.check_object(await gw.store.head_object(req.bucket, req.key, **pin))
    await gw.store.put_tags(req.bucket, req.key, tags, **pin)
    headers = {"x-amz-version-id": version} if version is not None else {}
    return web.Response(status=200, headers=headers)


async def delete_object_tagging(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    version = version_param(req)
    pin = {"version_id": version} if version is not None else {}
    if req.object_check is not None:
        await req.check_object(await gw.store.head_object(req.bucket, req.key, **pin))
    await gw.store.put_tags(req.bucket, req.key, {}, **pin)
    headers = {"x-amz-version-id": version} if version is not None else {}
    return web.Response(status=204, headers=headers)


_ATTRIBUTES = {"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"}


def _header_int(req: S3Request, name: str, default: int, maximum: int) -> int:
    raw = req.header(name)
    if raw is None or raw.strip() == "":
        return default
    raw = raw.strip()
    if not raw.isdigit():
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer "
                      "range", ArgumentName=name, ArgumentValue=raw[:100])
    return min(int(raw), maximum)


def _object_parts(info: ObjectInfo, count: int, table: PartTable | None,
                  max_parts: int, marker: int) -> dict[str, object]:
    """The ObjectParts element: the part list when the layout is known."""
    body: dict[str, object] = {"PartsCount": count}  # TotalPartsCount in the SDKs
    parts = table.parts if table is not None else None
    if parts is None and count == 1:
        parts = [ObjectPart(1, info.size)]  # one part: the whole object
    if parts is None:
        return body  # completed before part tables were kept
    after = [p for p in parts if p.part_number > marker]
    page = after[:max_parts]
    body.update({
        "PartNumberMarker": marker,
        "NextPartNumberMarker": page[-1].part_number if page else marker,
        "MaxParts": max_parts,
        "IsTruncated": len(after) > len(page),
        "Part": [{"PartNumber": p.part_number, "Size": p.size,
                  **{f"Checksum{a.upper()}": v for a, v in p.checksums.items()}}
                 for p in page] or None,
    })
    return body


async def get_object_attributes(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    wanted = {a.strip() for a in (req.header("x-amz-object-attributes") or "").split(",")
              if a.strip()}
    if not wanted or wanted - _ATTRIBUTES:
        raise S3Error("InvalidArgument", "Invalid attribute name specified.",
                      ArgumentName="x-amz-object-attributes")
    max_parts = _header_int(req, "x-amz-max-parts", 1000, 1000)
    marker = _header_int(req, "x-amz-part-number-marker", 0, 10000)
    version = version_param(req)
    info = await gw.store.head_object(
        req.bucket, req.key, **({"version_id": version} if version is not None else {}))
    await req.check_object(info)
    encrypted = await sse.open_read(gw, req, req.bucket, req.key, info)
    if encrypted is not None:
        info = encrypted.info
    check_preconditions(req.headers, info)
    count = multipart_count(info)
    table = None
    if count and (wanted & {"ObjectParts", "Checksum"}):
        table = await part_table(gw, req.bucket, req.key, info)
    body: dict[str, object] = {}
    if "ETag" in wanted:
        body["ETag"] = info.etag
    checksums = object_checksums(info, table)
    if "Checksum" in wanted and checksums:
        body["Checksum"] = {f"Checksum{alg.upper()}": value for alg, value in checksums.items()}
        body["Checksum"]["ChecksumType"] = checksum_type_of(next(iter(checksums.values())))
    if "ObjectParts" in wanted and count:
        body["ObjectParts"] = _object_parts(info, count, table, max_parts, marker)
    if "StorageClass" in wanted:
        body["StorageClass"] = "STANDARD"
    if "ObjectSize" in wanted:
        body["ObjectSize"] = info.size
    headers = {"Last-Modified": format_http_date(info.last_modified)}
    if info.version_id is not None:
        headers["x-amz-version-id"] = info.version_id
    return web.Response(body=xml.render("GetObjectAttributesResponse", body),
                        content_type="application/xml", headers=headers)
