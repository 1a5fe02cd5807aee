"""Multipart uploads: create, upload (and copy) parts, complete, abort, list."""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cachetools import TTLCache

from ...backends.base import MAX_PART_NUMBER
from .. import xml
from ..conditions import check_preconditions
from ..errors import S3Error
from ..names import check_key
from ..request import S3Request, meta_from_headers, verified_body
from .buckets import _int_param
from .objects import owner, parse_copy_source, reject_unsupported_write_headers

if TYPE_CHECKING:
    from ..server import Gateway

# (bucket, key, upload id) -> (parts, result) of recent Completes, for retried ones.
COMPLETED: TTLCache[tuple[str, str, str], tuple[list[tuple[int, str]], Any]] = TTLCache(
    maxsize=10_000, ttl=6 * 3600)
_COPY_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d+)$")
_CHECKSUM_ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


def _xml(body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, content_type="application/xml", headers=headers)


def _upload_id(req: S3Request) -> str:
    upload_id = req.query.get("uploadId", "")
    if not upload_id:
        raise S3Error("NoSuchUpload", UploadId=upload_id)
    return upload_id


def _part_number(req: S3Request) -> int:
    raw = req.query.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PART_NUMBER:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, "
                      "inclusive", ArgumentName="partNumber", ArgumentValue=raw)
    return int(raw)


async def create_multipart_upload(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    check_key(req.key)
    reject_unsupported_write_headers(req)
    meta = meta_from_headers(req)
    await gw.backend.head_bucket(req.bucket)
    upload_id = await gw.backend.create_multipart_upload(req.bucket, req.key, meta)
    headers = {}
    algorithm = (req.header("x-amz-checksum-algorithm") or "").lower()
    if algorithm:
        if algorithm not in _CHECKSUM_ALGORITHMS:
            raise S3Error("InvalidArgument", "Checksum algorithm provided is unsupported.")
        headers["x-amz-checksum-algorithm"] = algorithm.upper()
    body = xml.render(
        "InitiateMultipartUploadResult",
        {"Bucket": req.bucket, "Key": req.key, "UploadId": upload_id},
    )
    return _xml(body, headers)


async def upload_part(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    if "x-amz-copy-source" in req.headers:
        return await upload_part_copy(gw, req)
    number = _part_number(req)
    upload_id = _upload_id(req)
    reader = req.payload()
    etag = await gw.backend.upload_part(
        req.bucket, req.key, upload_id, number, verified_body(reader, None),
        size=reader.decoded_length,
    )
    headers = {"ETag": f'"{etag}"'}
    headers.update({f"x-amz-checksum-{a}": v for a, v in reader.checksums.items()})
    return web.Response(status=200, headers=headers)


async def upload_part_copy(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    number = _part_number(req)
    upload_id = _upload_id(req)
    src_bucket, src_key = parse_copy_source(req.headers["x-amz-copy-source"])
    source = await gw.objects.head(src_bucket, src_key)
    check_preconditions(req.headers, source, prefix="x-amz-copy-source-")
    byte_range = _copy_range(req.header("x-amz-copy-source-range"), source.size)
    info, body = await gw.objects.get(src_bucket, src_key, byte_range)
    try:
        if info.etag != source.etag:
            check_preconditions(req.headers, info, prefix="x-amz-copy-source-")
        size = (byte_range[1] - byte_range[0] + 1) if byte_range else info.size
        etag = await gw.backend.upload_part(
            req.bucket, req.key, upload_id, number, body, size=size
        )
    finally:
        await body.close()
    result = xml.render("CopyPartResult", {"LastModified": info.last_modified,
                                           "ETag": f'"{etag}"'})
    return _xml(result)


def _copy_range(header: str | None, size: int) -> tuple[int, int] | None:
    if header is None:
        return None
    m = _COPY_RANGE_RE.match(header.strip())
    if not m or int(m.group(2)) < int(m.group(1)):
        raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form "
                      "bytes=first-last where first and last are the zero-based offsets of the "
                      "first and last bytes to copy")
    first, last = int(m.group(1)), int(m.group(2))
    if last >= size:
        raise S3Error("InvalidRange", f"Range specified is not valid for source object of "
                      f"size: {size}", headers={"Content-Range": f"bytes */{size}"})
    return first, last


async def complete_multipart_upload(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    upload_id = _upload_id(req)
    doc = xml.parse(await req.read_small_body(), "CompleteMultipartUpload")
    parts: list[tuple[int, str]] = []
    for part in xml.as_list(doc.get("Part")):
        if not isinstance(part, dict) or "PartNumber" not in part or "ETag" not in part:
            raise S3Error("MalformedXML")
        raw_number = xml.text(part["PartNumber"]).strip()
        if not raw_number.isdigit():
            raise S3Error("MalformedXML")
        parts.append((int(raw_number), xml.text(part["ETag"]).strip().strip('"')))
    if not parts:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not "
                      "validate against our published schema: no parts")
    numbers = [n for n, _ in parts]
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        raise S3Error("InvalidPartOrder", UploadId=upload_id)
    gw.objects.invalidate(req.bucket, req.key)
    done_key = (req.bucket, req.key, upload_id)
    try:
        info = await gw.backend.complete_multipart_upload(req.bucket, req.key, upload_id, parts)
    except S3Error as exc:
        # A retried Complete whose first answer was lost: answer it again (S3 does).
        previous = COMPLETED.get(done_key)
        if exc.code != "NoSuchUpload" or previous is None or previous[0] != parts:
            raise
        info = previous[1]
    else:
        COMPLETED[done_key] = (parts, info)
    gw.objects.invalidate(req.bucket, req.key)
    body = xml.render(
        "CompleteMultipartUploadResult",
        {
            "Location": f"http://{req.http.host}/{req.bucket}/{req.key}",
            "Bucket": req.bucket,
            "Key": req.key,
            "ETag": f'"{info.etag}"',
        },
    )
    return _xml(body)


async def abort_multipart_upload(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    await gw.backend.abort_multipart_upload(req.bucket, req.key, _upload_id(req))
    return web.Response(status=204)


async def list_parts(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    upload_id = _upload_id(req)
    marker = _int_param(req, "part-number-marker", 0, MAX_PART_NUMBER)
    max_parts = _int_param(req, "max-parts", 1000, 1000)
    parts, truncated = await gw.backend.list_parts(
        req.bucket, req.key, upload_id, part_number_marker=marker, max_parts=max_parts
    )
    result: dict[str, Any] = {
        "Bucket": req.bucket,
        "Key": req.key,
        "UploadId": upload_id,
        "Initiator": owner(req),
        "Owner": owner(req),
        "StorageClass": "STANDARD",
        "PartNumberMarker": marker,
        "NextPartNumberMarker": parts[-1].part_number if parts else marker,
        "MaxParts": max_parts,
        "IsTruncated": truncated,
        "Part": [
            {
                "PartNumber": p.part_number,
                "LastModified": p.last_modified,
                "ETag": f'"{p.etag}"',
                "Size": p.size,
            }
            for p in parts
        ]
        or None,
    }
    return _xml(xml.render("ListPartsResult", result))


async def list_multipart_uploads(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    q = req.query
    max_uploads = _int_param(req, "max-uploads", 1000, 1000)
    await gw.backend.head_bucket(req.bucket)
    page = await gw.backend.list_multipart_uploads(
        req.bucket,
        prefix=q.get("prefix", ""),
        delimiter=q.get("delimiter") or None,
        key_marker=q.get("key-marker") or None,
        upload_id_marker=q.get("upload-id-marker") or None,
        max_uploads=max_uploads,
    )
    result: dict[str, Any] = {
        "Bucket": req.bucket,
        "KeyMarker": q.get("key-marker", ""),
        "UploadIdMarker": q.get("upload-id-marker", ""),
        "NextKeyMarker": page.next_key_marker or "",
        "NextUploadIdMarker": page.next_upload_id_marker or "",
        "Prefix": q.get("prefix", ""),
        "Delimiter": q.get("delimiter") or None,
        "MaxUploads": max_uploads,
        "IsTruncated": page.is_truncated,
        "Upload": [
            {
                "Key": u.key,
                "UploadId": u.upload_id,
                "Initiator": owner(req),
                "Owner": owner(req),
                "StorageClass": "STANDARD",
                "Initiated": u.initiated,
            }
            for u in page.uploads
        ]
        or None,
        "CommonPrefixes": [{"Prefix": p} for p in page.common_prefixes] or None,
    }
    return _xml(xml.render("ListMultipartUploadsResult", result))
