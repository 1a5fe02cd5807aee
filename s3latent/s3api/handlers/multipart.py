"""Multipart uploads: create, upload (and copy) parts, complete, abort, list."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cachetools import TTLCache

from ...backends.base import MAX_PART_NUMBER, HashedBody, PartInfo, UploadChecksum
from ...errors import S3Error
from ...objects import encryption
from .. import access, sse, xml
from ..checksums import (
    ALGORITHMS,
    COMPOSITE_ALGORITHMS,
    FULL_OBJECT_ALGORITHMS,
    is_valid_b64,
    multipart_checksum,
    new_checksum,
)
from ..conditions import check_preconditions
from ..names import check_new_key
from ..request import S3Request, meta_from_headers, verified_body
from .buckets import _int_param
from .object_lock import lock_from_headers
from .objects import (
    open_copy_source,
    parse_versioned_copy_source,
    refuse_encrypted_latent,
    reject_unsupported_write_headers,
    written_version,
)

if TYPE_CHECKING:
    from ..gateway import Gateway

# (bucket, key, upload id) -> (parts, result, checksum headers) of recent Completes,
# for retried ones.
COMPLETED: TTLCache[tuple[str, str, str],
                    tuple[list[tuple[int, str]], Any, dict[str, str]]] = TTLCache(
    maxsize=10_000, ttl=6 * 3600)
_COPY_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d+)$")
_COMPOSITE_RE = re.compile(r"^(.+)-(\d{1,5})$")
CHECKSUM_TYPES = ("COMPOSITE", "FULL_OBJECT")


def checksum_element(algorithm: str) -> str:
    """The XML element / boto3 field of an algorithm: sha256 -> ChecksumSHA256."""
    return "Checksum" + algorithm.upper()


def upload_checksum_from_headers(req: S3Request) -> UploadChecksum | None:
    """x-amz-checksum-algorithm / x-amz-checksum-type of CreateMultipartUpload, checked."""
    raw_algorithm = req.header("x-amz-checksum-algorithm")
    raw_type = req.header("x-amz-checksum-type")
    if raw_algorithm is None:
        if raw_type is not None:
            raise S3Error("InvalidRequest", "The x-amz-checksum-type header can only be used "
                          "with the x-amz-checksum-algorithm header.")
        return None
    algorithm = raw_algorithm.strip().lower()
    if algorithm not in ALGORITHMS:
        raise S3Error("InvalidArgument", "Checksum algorithm provided is unsupported. Please "
                      "try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, "
                      "SHA256]", ArgumentName="x-amz-checksum-algorithm",
                      ArgumentValue=raw_algorithm[:100])
    if raw_type is None:
        kind = "FULL_OBJECT" if algorithm == "crc64nvme" else "COMPOSITE"
    else:
        kind = raw_type.strip().upper()
        if kind not in CHECKSUM_TYPES:
            raise S3Error("InvalidRequest", "Value for x-amz-checksum-type header is invalid.")
    allowed = COMPOSITE_ALGORITHMS if kind == "COMPOSITE" else FULL_OBJECT_ALGORITHMS
    if algorithm not in allowed:
        raise S3Error("InvalidRequest", f"The {kind} checksum type cannot be used with the "
                      f"{algorithm} checksum algorithm.")
    return UploadChecksum(algorithm, kind)


class _ChecksummedBody(HashedBody):
    """A copied part's bytes, hashed as a client upload would be (MD5 + checksum)."""

    def __init__(self, body: AsyncIterable[bytes], algorithm: str | None) -> None:
        self._body = body
        self._md5 = hashlib.md5()
        self._checksum = new_checksum(algorithm) if algorithm else None
        self._result: dict[str, str] = {}
        self._hex: str | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._body:
            self._md5.update(chunk)
            if self._checksum is not None:
                self._checksum.update(chunk)
            yield chunk
        self._hex = self._md5.hexdigest()
        if self._checksum is not None:
            self._result = {self._checksum.algorithm: self._checksum.b64()}

    @property
    def md5_hex(self) -> str:
        assert self._hex is not None, "read the body first"
        return self._hex

    @property
    def checksums(self) -> dict[str, str]:
        return dict(self._result)


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
    check_new_key(req.key)
    reject_unsupported_write_headers(req)
    meta = meta_from_headers(req)
    meta.internal.update(await access.new_object_fields(gw, req, req.bucket))
    checksum = upload_checksum_from_headers(req)
    lock = lock_from_headers(req)
    await gw.store.head_bucket(req.bucket)
    if lock is not None and not await gw.store.get_object_lock_configuration(req.bucket):
        raise S3Error("InvalidRequest", "Bucket is missing ObjectLockConfiguration")
    encrypt = await sse.for_write(gw, req.bucket, req.headers)
    if encrypt is not None:
        refuse_encrypted_latent(meta)
        meta.internal.update(encrypt.fields)
    upload_id = await gw.store.create_multipart_upload(
        req.bucket, req.key, meta, checksum=checksum,
        **({"lock": lock} if lock is not None else {}))
    headers = dict(encrypt.headers) if encrypt is not None else {}
    if encrypt is not None:
        try:  # before the client learns the upload id: its parts will look for it
            await gw.store.put_upload_record(req.bucket, upload_id, encrypt.fields)
        except BaseException:
            await gw.store.abort_multipart_upload(req.bucket, req.key, upload_id)
            raise
    if checksum is not None:
        headers["x-amz-checksum-algorithm"] = checksum.algorithm.upper()
        headers["x-amz-checksum-type"] = checksum.type
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
    encrypt = await sse.upload_encryption(gw, req, req.bucket, req.key, upload_id)
    reader = req.payload()
    checksum = await gw.store.upload_checksum(req.bucket, req.key, upload_id)
    if checksum is not None:
        # Every part of such an upload keeps a checksum of the upload's algorithm,
        # whether or not the client sent one (as S3 does).
        reader.compute(checksum.algorithm)
    body: AsyncIterable[bytes] = verified_body(reader, None)
    size = reader.decoded_length
    if encrypt is not None:
        body = encrypt.body(body, number)
        size = encryption.ciphertext_size(size) if size is not None else None
    etag = await gw.store.upload_part(
        req.bucket, req.key, upload_id, number, body, size=size,
    )
    headers = {"ETag": f'"{etag}"'}
    headers.update(encrypt.headers if encrypt is not None else {})
    headers.update({f"x-amz-checksum-{a}": v for a, v in reader.checksums.items()})
    return web.Response(status=200, headers=headers)


async def upload_part_copy(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    number = _part_number(req)
    upload_id = _upload_id(req)
    src_bucket, src_key, src_version = parse_versioned_copy_source(
        req.headers["x-amz-copy-source"])
    pin = {"version_id": src_version} if src_version is not None else {}
    source = await gw.store.head_object(src_bucket, src_key, **pin)
    await access.authorize_source(gw, req, src_bucket, src_key, source)
    src_enc = await sse.open_read(gw, req, src_bucket, src_key, source, copy_source=True)
    view = src_enc.info if src_enc is not None else source
    check_preconditions(req.headers, view, prefix="x-amz-copy-source-")
    byte_range = _copy_range(req.header("x-amz-copy-source-range"), view.size)
    encrypt = await sse.upload_encryption(gw, req, req.bucket, req.key, upload_id)
    checksum = await gw.store.upload_checksum(req.bucket, req.key, upload_id)
    info, body = await open_copy_source(gw, src_bucket, src_key, source, src_enc, byte_range)
    hashed = _ChecksummedBody(body, checksum.algorithm if checksum else None)
    try:
        size = (byte_range[1] - byte_range[0] + 1) if byte_range else info.size
        stream: AsyncIterable[bytes] = hashed
        if encrypt is not None:
            stream = encrypt.body(hashed, number)
            size = encryption.ciphertext_size(size)
        etag = await gw.store.upload_part(
            req.bucket, req.key, upload_id, number, stream, size=size
        )
    finally:
        await body.close()
    result: dict[str, Any] = {"LastModified": info.last_modified, "ETag": f'"{etag}"'}
    for algorithm, value in hashed.checksums.items():
        result[checksum_element(algorithm)] = value
    headers = {"x-amz-copy-source-version-id": source.version_id} \
        if source.version_id is not None else {}
    headers.update(encrypt.headers if encrypt is not None else {})
    return _xml(xml.render("CopyPartResult", result), headers=headers or None)


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


def _complete_request(doc: dict[str, Any]) -> tuple[list[tuple[int, str]],
                                                    dict[int, dict[str, str]]]:
    """[(part number, ETag)] and {part number: {algorithm: checksum}} of a Complete."""
    parts: list[tuple[int, str]] = []
    part_checksums: dict[int, dict[str, str]] = {}
    for part in xml.as_list(doc.get("Part")):
        if not isinstance(part, dict) or "PartNumber" not in part or "ETag" not in part:
            raise S3Error("MalformedXML")
        raw_number = xml.text(part["PartNumber"]).strip()
        if not raw_number.isdigit():
            raise S3Error("MalformedXML")
        number = int(raw_number)
        parts.append((number, xml.text(part["ETag"]).strip().strip('"')))
        given = {a: xml.text(part[checksum_element(a)]).strip() for a in ALGORITHMS
                 if checksum_element(a) in part}
        if given:
            part_checksums[number] = given
    if not parts:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not "
                      "validate against our published schema: no parts")
    return parts, part_checksums


def _object_checksum_header(req: S3Request) -> tuple[str, str] | None:
    """(algorithm, value) of the x-amz-checksum-<algorithm> a Complete names, format-checked."""
    found = []
    for algorithm in ALGORITHMS:
        value = req.header(f"x-amz-checksum-{algorithm}")
        if value is not None:
            found.append((algorithm, value.strip()))
    if not found:
        return None
    if len(found) > 1:
        raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple "
                      "checksum Types are not allowed.")
    algorithm, value = found[0]
    m = _COMPOSITE_RE.match(value)
    digest = m.group(1) if m else value
    if not is_valid_b64(algorithm, digest):
        # As for PutObject: a value that cannot be the digest cannot match it.
        raise S3Error("BadDigest", f"Value for x-amz-checksum-{algorithm} header is invalid.")
    return algorithm, value


async def _all_parts(gw: Gateway, bucket: str, key: str, upload_id: str) -> dict[int, PartInfo]:
    stored: dict[int, PartInfo] = {}
    marker = 0
    while True:
        page, truncated = await gw.store.list_parts(bucket, key, upload_id,
                                                      part_number_marker=marker)
        stored.update({p.part_number: p for p in page})
        if not truncated or not page:
            return stored
        marker = page[-1].part_number


async def _object_checksum(gw: Gateway, req: S3Request, upload_id: str,
                           parts: list[tuple[int, str]],
                           part_checksums: dict[int, dict[str, str]]) -> dict[str, str]:
    """Verify the checksums a Complete carries; {algorithm: value} to store, or {}.

    Raises before anything is committed, so a refused Complete leaves the upload open.
    """
    assert req.bucket is not None and req.key is not None
    claimed = _object_checksum_header(req)
    checksum = await gw.store.upload_checksum(req.bucket, req.key, upload_id)
    claimed_type = req.header("x-amz-checksum-type")
    if checksum is None:
        if claimed is not None or claimed_type is not None:
            raise S3Error("InvalidRequest", "The upload was not created with a checksum "
                          "algorithm, so no object checksum can be verified.")
        return {}
    if claimed_type is not None and claimed_type.strip().upper() != checksum.type:
        raise S3Error("InvalidRequest", f"The upload was created using the {checksum.type} "
                      "checksum mode. The complete request must use the same checksum mode.")
    if claimed is not None and claimed[0] != checksum.algorithm:
        raise S3Error("InvalidRequest", f"Checksum Type mismatch occurred, expected checksum "
                      f"Type: {checksum.algorithm}, actual checksum Type: {claimed[0]}")
    stored = await _all_parts(gw, req.bucket, req.key, upload_id)
    values: list[tuple[str, int]] = []
    for number, etag in parts:
        part = stored.get(number)
        if part is None or part.etag != etag:
            raise S3Error("InvalidPart", UploadId=upload_id, PartNumber=str(number))
        recorded = part.checksums.get(checksum.algorithm)
        if not recorded:
            raise S3Error("InvalidRequest", f"The upload was created using a "
                          f"{checksum.algorithm} checksum. The checksum of part {number} is "
                          "not known: upload the part again.")
        given = part_checksums.get(number, {}).get(checksum.algorithm)
        if given is not None and given != recorded:
            raise S3Error("InvalidPart", f"The {checksum.algorithm.upper()} of part {number} "
                          "does not match the checksum of the uploaded part.",
                          UploadId=upload_id, PartNumber=str(number))
        values.append((recorded, part.size))
    value = multipart_checksum(checksum.algorithm, checksum.type, values)
    if claimed is not None and claimed[1] not in (value, value.rsplit("-", 1)[0]):
        raise S3Error("BadDigest", f"The {checksum.algorithm.upper()} you specified did not "
                      "match the calculated checksum.")
    return {checksum.algorithm: value}


async def _check_none_match(gw: Gateway, req: S3Request) -> None:
    """If-None-Match on Complete (`*` or an ETag), judged against the key's current object
    as clients see it. Checked before the commit, not atomically with it."""
    assert req.bucket is not None and req.key is not None
    none_match = req.header("If-None-Match")
    if none_match is None:
        return
    try:
        current = await gw.store.head_object(req.bucket, req.key)
    except S3Error as exc:
        if exc.code != "NoSuchKey":
            raise
        return
    etags, _ = encryption.client_views(current)  # an SSE-S3 object's plaintext MD5 too
    if any(tag.strip().removeprefix("W/").strip('"') in ("*", *etags)
           for tag in none_match.split(",")):
        raise S3Error("PreconditionFailed", Condition="If-None-Match")


async def complete_multipart_upload(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    upload_id = _upload_id(req)
    # x-amz-checksum-* headers name the object's checksum here, not the XML body's.
    body = await req.read_small_body(body_checksum_headers=False)
    parts, part_checksums = _complete_request(xml.parse(body, "CompleteMultipartUpload"))
    numbers = [n for n, _ in parts]
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        # Repeated part numbers too: S3 refuses them with this code.
        raise S3Error("InvalidPartOrder", UploadId=upload_id)
    await _check_none_match(gw, req)
    done_key = (req.bucket, req.key, upload_id)
    encrypted = await sse.upload_record(gw, req.bucket, upload_id)
    encryption_headers = sse.complete_headers(gw, req, encrypted)
    try:
        checksums = await _object_checksum(gw, req, upload_id, parts, part_checksums)
        stored_checksum = next(iter(checksums.values()), None)
        info = await gw.store.complete_multipart_upload(
            req.bucket, req.key, upload_id, parts, checksum=stored_checksum,
            if_match=req.header("If-Match"))
    except S3Error as exc:
        # A retried Complete whose first answer was lost: answer it again (S3 does).
        previous = COMPLETED.get(done_key)
        if exc.code != "NoSuchUpload" or previous is None or previous[0] != parts:
            raise
        _, info, checksums = previous
    else:
        COMPLETED[done_key] = (parts, info, checksums)
        if encrypted:
            await sse.index_written(gw, req.bucket, req.key, info)
            await gw.store.drop_upload_record(req.bucket, upload_id)
            sse.forget_upload(req.bucket, upload_id)
    result: dict[str, Any] = {
        "Location": f"http://{req.http.host}/{req.bucket}/{req.key}",
        "Bucket": req.bucket,
        "Key": req.key,
        "ETag": f'"{info.etag}"',
    }
    for algorithm, value in checksums.items():
        result[checksum_element(algorithm)] = value
        result["ChecksumType"] = "COMPOSITE" if _COMPOSITE_RE.match(value) else "FULL_OBJECT"
    headers = written_version(info.version_id)
    headers.update(encryption_headers)
    return _xml(xml.render("CompleteMultipartUploadResult", result), headers=headers or None)


async def abort_multipart_upload(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    upload_id = _upload_id(req)
    await gw.store.abort_multipart_upload(req.bucket, req.key, upload_id)
    if await sse.upload_record(gw, req.bucket, upload_id):
        await gw.store.drop_upload_record(req.bucket, upload_id)
        sse.forget_upload(req.bucket, upload_id)
    return web.Response(status=204)


async def list_parts(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    upload_id = _upload_id(req)
    marker = _int_param(req, "part-number-marker", 0, MAX_PART_NUMBER)
    max_parts = _int_param(req, "max-parts", 1000, 1000)
    parts, truncated = await gw.store.list_parts(
        req.bucket, req.key, upload_id, part_number_marker=marker, max_parts=max_parts
    )
    checksum = await gw.store.upload_checksum(req.bucket, req.key, upload_id)
    result: dict[str, Any] = {
        "Bucket": req.bucket,
        "Key": req.key,
        "UploadId": upload_id,
        "Initiator": access.caller_element(gw, req),
        "Owner": access.caller_element(gw, req),
        "StorageClass": "STANDARD",
        "PartNumberMarker": marker,
        "NextPartNumberMarker": parts[-1].part_number if parts else marker,
        "MaxParts": max_parts,
        "IsTruncated": truncated,
        "ChecksumAlgorithm": checksum.algorithm.upper() if checksum else None,
        "ChecksumType": checksum.type if checksum else None,
        "Part": [
            {
                "PartNumber": p.part_number,
                "LastModified": p.last_modified,
                "ETag": f'"{p.etag}"',
                "Size": p.size,
                **{checksum_element(a): v for a, v in p.checksums.items()},
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
    await gw.store.head_bucket(req.bucket)
    page = await gw.store.list_multipart_uploads(
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
                "Initiator": access.caller_element(gw, req),
                "Owner": access.caller_element(gw, req),
                "StorageClass": "STANDARD",
                "Initiated": u.initiated,
            }
            for u in page.uploads
        ]
        or None,
        "CommonPrefixes": [{"Prefix": p} for p in page.common_prefixes] or None,
    }
    return _xml(xml.render("ListMultipartUploadsResult", result))
