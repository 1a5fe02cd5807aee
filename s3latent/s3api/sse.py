"""Server-side encryption at the S3 front end: headers, keys, errors, and the bodies.

Which encryption a write gets (SSE-S3, SSE-C, the bucket's default), what a read needs (the
customer key of an SSE-C object), and the S3 answers when those are wrong. The crypto and the
stored format are objects/encryption.py; docs/encryption.md is the user's view.

Encryption sits here, around the store, so everything below (the read cache, a cluster's
forwarded reads, the converter) only ever sees ciphertext and its key record: a cached or
forwarded SSE-C object is useless without the key the request carries.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from ..backends.base import (
    ObjectBody,
    ObjectInfo,
    ObjectMeta,
    ObjectPart,
    PartTable,
    read_body,
)
from ..errors import S3Error
from ..objects import encryption as enc
from . import xml

if TYPE_CHECKING:
    from .gateway import Gateway
    from .request import S3Request

log = logging.getLogger(__name__)

SSE = "x-amz-server-side-encryption"
KMS_KEY = "x-amz-server-side-encryption-aws-kms-key-id"
CUSTOMER = "x-amz-server-side-encryption-customer-"
COPY_CUSTOMER = "x-amz-copy-source-server-side-encryption-customer-"
RECORD = "encryption"  # the bucket record of the default encryption
ALGORITHMS = ("AES256", "aws:kms", "aws:kms:dsse")
_MULTIPART_ETAG = re.compile(r"^[0-9a-fA-F]{32}-(\d{1,5})$")
# Upload id -> its encryption fields ({} for none): records never change once written.
_UPLOADS: LRUCache[tuple[str, str], dict[str, str]] = LRUCache(maxsize=10_000)


@dataclass
class CustomerKey:
    """An SSE-C key as a request gave it (checked against its MD5)."""

    key: bytes
    md5: str


def customer_key(headers: Mapping[str, str], prefix: str = CUSTOMER) -> CustomerKey | None:
    """The SSE-C key of a request (or of its copy source), or None; S3's errors if malformed."""
    algorithm = headers.get(prefix + "algorithm")
    raw_key = headers.get(prefix + "key")
    md5 = headers.get(prefix + "key-md5") or headers.get(prefix + "key-MD5")
    if algorithm is None and raw_key is None and md5 is None:
        return None
    if algorithm is None:
        raise S3Error("InvalidArgument", "Requests specifying Server Side Encryption with "
                      "Customer provided keys must provide a valid encryption algorithm.",
                      ArgumentName=prefix + "algorithm", ArgumentValue="null")
    if algorithm != "AES256":
        raise S3Error("InvalidEncryptionAlgorithmError", ArgumentName=prefix + "algorithm",
                      ArgumentValue=algorithm[:100])
    if raw_key is None:
        raise S3Error("InvalidArgument", "Requests specifying Server Side Encryption with "
                      "Customer provided keys must provide an appropriate secret key.",
                      ArgumentName=prefix + "key", ArgumentValue="null")
    try:
        key = base64.b64decode(raw_key.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != enc.KEY_BYTES:
        raise S3Error("InvalidArgument", "The secret key was invalid for the specified "
                      "algorithm.", ArgumentName=prefix + "key", ArgumentValue="null")
    if md5 is None:
        raise S3Error("InvalidArgument", "Requests specifying Server Side Encryption with "
                      "Customer provided keys must provide the client calculated MD5 of the "
                      "secret key.", ArgumentName=prefix + "key-MD5", ArgumentValue="null")
    if md5.strip() != base64.b64encode(hashlib.md5(key).digest()).decode():
        raise S3Error("InvalidArgument", "The calculated MD5 hash of the key did not match "
                      "the hash that was provided.", ArgumentName=prefix + "key-MD5",
                      ArgumentValue="null")
    return CustomerKey(key, md5.strip())


def _headers_of(mode: str | None, customer: CustomerKey | None) -> dict[str, str]:
    if mode == enc.MODE_S3:
        return {SSE: "AES256"}
    if mode == enc.MODE_C and customer is not None:
        return {CUSTOMER + "algorithm": "AES256", CUSTOMER + "key-MD5": customer.md5}
    return {}


def _kms_unusable() -> S3Error:
    return S3Error("KMS.NotFoundException", "SSE-KMS is not available: s3latent has no key "
                   "management service, so no KMS key is usable (use SSE-S3 or SSE-C; "
                   "docs/encryption.md).")


def refuse_kms(algorithm: str | None) -> None:
    if algorithm in ("aws:kms", "aws:kms:dsse"):
        raise _kms_unusable()


@dataclass
class Write:
    """The encryption of a new object or upload: what to store, what to answer."""

    sealing: enc.Sealing
    headers: dict[str, str]

    @property
    def fields(self) -> dict[str, str]:
        return self.sealing.fields

    def body(self, plain: Any, part_number: int = 0,
             meta: ObjectMeta | None = None) -> enc.EncryptingBody:
        """The stored chunk of `plain`. With the object's `meta` (a single PUT or copy), an
        SSE-S3 object records its plaintext's MD5 there: its ETag, as S3 gives it."""
        record = meta.internal if meta is not None and \
            self.fields.get(enc.F_MODE) == enc.MODE_S3 else None
        return enc.EncryptingBody(plain, self.sealing.data_key, part_number,
                                  plain_md5_to=record)


def etag_of(info: ObjectInfo) -> str:
    """The ETag clients see for an object just written or read (see Write.body)."""
    etag = info.meta.internal.get(enc.F_ETAG)
    if etag and enc.mode_of(info.meta.internal) == enc.MODE_S3 and \
            not _MULTIPART_ETAG.match(info.etag) and not info.parts_count:
        return etag
    return info.etag


def new_s3(gw: Gateway) -> enc.Sealing:
    """A new SSE-S3 sealing; 501 with the reason when the gateway has no master key."""
    try:
        return enc.new_sse_s3(gw.keyring)
    except enc.KeyUnavailable as exc:
        raise S3Error("NotImplemented", f"SSE-S3 is not available on this gateway: {exc}.") \
            from exc


async def bucket_default(gw: Gateway, bucket: str) -> dict[str, Any] | None:
    record = await gw.store.get_bucket_config(bucket, RECORD)
    return record if isinstance(record, dict) and record.get("algorithm") else None


async def for_write(gw: Gateway, bucket: str, headers: Mapping[str, str]) -> Write | None:
    """The encryption a write asks for (headers, or POST form fields, lower-case names),
    else the bucket's default; None: stored unencrypted."""
    algorithm = headers.get(SSE)
    customer = customer_key(headers)
    if algorithm is not None:
        if customer is not None:
            raise S3Error("InvalidArgument", "Server Side Encryption with Customer provided "
                          "key is incompatible with the encryption method specified",
                          ArgumentName=SSE, ArgumentValue=algorithm[:100])
        if algorithm not in ALGORITHMS:
            raise S3Error("InvalidArgument", "The encryption method specified is not "
                          "supported", ArgumentName=SSE, ArgumentValue=algorithm[:100])
        refuse_kms(algorithm)
        return Write(new_s3(gw), {SSE: "AES256"})
    if headers.get(KMS_KEY) is not None:
        raise S3Error("InvalidArgument", "Specifying a KMS key id requires the "
                      "x-amz-server-side-encryption header with aws:kms.",
                      ArgumentName=KMS_KEY)
    if customer is not None:
        return Write(enc.new_sse_c(customer.key), _headers_of(enc.MODE_C, customer))
    default = await bucket_default(gw, bucket)
    if default is None:
        return None
    refuse_kms(default["algorithm"])
    return Write(new_s3(gw), {SSE: "AES256"})


def names_encryption(req: S3Request) -> bool:
    """Whether a request asks for an encryption (a copy onto itself may then change it)."""
    return any(req.header(n) is not None for n in (SSE, CUSTOMER + "algorithm"))


def refuse_read_headers(req: S3Request) -> None:
    """GET and HEAD take no x-amz-server-side-encryption (S3: 400)."""
    for name in (SSE, KMS_KEY):
        if req.header(name) is not None:
            raise S3Error("InvalidArgument", f"The {name} header is not supported for this "
                          "operation.", ArgumentName=name)


@dataclass
class Read:
    """An encrypted object opened for reading: its plaintext view and how to decrypt it."""

    info: ObjectInfo  # as clients see it: plaintext size, part table in plaintext sizes
    stored: ObjectInfo  # as the backend holds it
    chunks: list[enc.Chunk]
    data_key: bytes
    headers: dict[str, str]


def _internal_error(bucket: str, key: str, why: object) -> S3Error:
    log.error("encrypted object %s/%s cannot be read: %s", bucket, key, why)
    return S3Error("InternalError")


async def _stored_parts(gw: Gateway, bucket: str, key: str, info: ObjectInfo
                        ) -> tuple[list[tuple[int | None, int]], PartTable | None]:
    m = _MULTIPART_ETAG.match(info.etag)
    count = info.parts_count or (int(m.group(1)) if m else None)
    if count is None:
        return [(0, info.size)], None
    table = info.part_table if info.part_table is not None and \
        info.part_table.etag == info.etag else await gw.store.get_part_table(bucket, key,
                                                                              info.etag)
    if table is None:
        if count == 1:  # no table is kept for one part: it is the whole object
            return [(None, info.size)], None
        raise _internal_error(bucket, key, "its part table is missing")
    return [(p.part_number, p.size) for p in table.parts], table


async def open_read(gw: Gateway, req: S3Request, bucket: str, key: str, info: ObjectInfo, *,
                    copy_source: bool = False) -> Read | None:
    """None for an unencrypted object; else its key, checked as S3 checks it."""
    customer = customer_key(req.headers, COPY_CUSTOMER if copy_source else CUSTOMER)
    mode = enc.mode_of(info.meta.internal)
    if mode is None or (mode == enc.MODE_S3 and customer is not None):
        if customer is not None:
            raise S3Error("InvalidRequest", "The encryption parameters are not applicable to "
                          "this object.")
        return None
    if mode == enc.MODE_C and customer is None:
        raise S3Error("InvalidRequest", "The object was stored using a form of Server Side "
                      "Encryption. The correct parameters must be provided to retrieve the "
                      "object.")
    try:
        data_key = enc.data_key(info.meta.internal, gw.keyring,
                                customer.key if customer else None)
    except enc.WrongKey as exc:
        raise S3Error("AccessDenied", "The provided customer key does not match the key the "
                      "object was encrypted with.") from exc
    except (enc.KeyUnavailable, enc.EncryptionError) as exc:
        raise _internal_error(bucket, key, exc) from exc
    parts, table = await _stored_parts(gw, bucket, key, info)
    try:
        chunks = enc.layout(parts)
    except enc.EncryptionError as exc:
        raise _internal_error(bucket, key, exc) from exc
    plain_table = None
    if table is not None:
        plain_table = dataclasses.replace(table, parts=[
            ObjectPart(c.part_number, c.size, dict(p.checksums))
            for c, p in zip(chunks, table.parts, strict=True)])
    size = sum(c.size for c in chunks)
    view = dataclasses.replace(info, size=size, part_table=plain_table, etag=etag_of(info))
    return Read(view, info, chunks, data_key, _headers_of(mode, customer))


async def read_body_of(gw: Gateway, bucket: str, key: str, read: Read,
                       byte_range: tuple[int, int] | None,
                       version_id: str | None = None) -> ObjectBody:
    """The plaintext of `byte_range` (None: all), fetched and decrypted as it streams.

    The first piece is opened before this returns, so damage there is a 500 answer rather
    than a response cut short."""
    pin = {"version_id": version_id} if version_id is not None else {}
    first, last = byte_range if byte_range is not None else (0, read.info.size - 1)
    rplan = enc.plan(read.chunks, first, last)
    salt = None
    if rplan.salt_at is not None:
        at = rplan.salt_at
        info, body = await gw.store.get_object(bucket, key, (at, at + enc.SALT - 1),
                                               known=read.stored, **pin)
        salt = await read_body(body)
        if info.etag != read.stored.etag or len(salt) != enc.SALT:
            raise S3Error("ServiceUnavailable", "The object changed while it was read; "
                          "retry.")
    info, body = await gw.store.get_object(bucket, key, rplan.span, known=read.stored, **pin)
    if info.etag != read.stored.etag:
        await body.close()
        raise S3Error("ServiceUnavailable", "The object changed while it was read; retry.")
    return await _primed(enc.DecryptingBody(body, rplan, read.data_key, salt), bucket, key)


async def decrypt_whole(bucket: str, key: str, read: Read, body: ObjectBody) -> ObjectBody:
    """The plaintext of a body already opened on the whole stored object."""
    rplan = enc.plan(read.chunks, 0, read.info.size - 1)
    return await _primed(enc.DecryptingBody(body, rplan, read.data_key), bucket, key)


class _Primed:
    def __init__(self, first: bytes | None, rest: AsyncIterator[bytes], body: ObjectBody,
                 where: str) -> None:
        self._first, self._rest, self._body, self._where = first, rest, body, where

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._first is not None:
            yield self._first
        try:
            async for piece in self._rest:
                yield piece
        except enc.EncryptionError as exc:
            log.error("encrypted object %s: %s", self._where, exc)
            raise

    async def close(self) -> None:
        await self._body.close()


async def _primed(body: enc.DecryptingBody, bucket: str, key: str) -> ObjectBody:
    rest = aiter(body)
    try:
        first: bytes | None = await anext(rest)
    except StopAsyncIteration:
        first = None
    except enc.EncryptionError as exc:
        await body.close()
        raise _internal_error(bucket, key, exc) from exc
    except BaseException:
        await body.close()
        raise
    return _Primed(first, rest, body, f"{bucket}/{key}")


async def upload_record(gw: Gateway, bucket: str, upload_id: str) -> dict[str, str]:
    """An upload's encryption fields ({}: none), remembered: a record never changes."""
    cached = _UPLOADS.get((bucket, upload_id))
    if cached is None:
        cached = await gw.store.get_upload_record(bucket, upload_id) or {}
        _UPLOADS[(bucket, upload_id)] = cached
    return cached


async def index_written(gw: Gateway, bucket: str, key: str, info: ObjectInfo) -> None:
    """An encrypted object was written: record its plaintext size for listings."""
    try:
        parts, _ = await _stored_parts(gw, bucket, key, info)
        size = sum(c.size for c in enc.layout(parts))
    except (S3Error, enc.EncryptionError) as exc:
        log.warning("plaintext size of %s/%s unknown: %s", bucket, key, exc)
        return
    await gw.store.index_encrypted(bucket, key, info.etag, size, etag_of(info))


def complete_headers(gw: Gateway, req: S3Request, record: dict[str, str]) -> dict[str, str]:
    """The encryption headers of a CompleteMultipartUpload answer, checked before the commit:
    SSE-C headers need not be sent, but if they are they must be the upload's key."""
    mode = enc.mode_of(record)
    customer = customer_key(req.headers)
    if customer is not None:
        if mode != enc.MODE_C:
            raise S3Error("InvalidRequest", "The upload was not created with a customer "
                          "provided key: the encryption parameters are not applicable.")
        try:
            enc.data_key(record, gw.keyring, customer.key)
        except enc.WrongKey as exc:
            raise S3Error("InvalidRequest", "The provided encryption parameters did not "
                          "match the ones used originally.") from exc
        except (enc.KeyUnavailable, enc.EncryptionError) as exc:
            raise _internal_error(req.bucket or "", req.key or "", exc) from exc
    return _headers_of(mode, None)  # S3 names no customer key in this answer


async def upload_encryption(gw: Gateway, req: S3Request, bucket: str, key: str,
                            upload_id: str) -> Write | None:
    """The encryption of an upload's parts, checked against the part request's headers."""
    cached = await upload_record(gw, bucket, upload_id)
    customer = customer_key(req.headers)
    mode = enc.mode_of(cached)
    if mode is None or (mode == enc.MODE_S3 and customer is not None):
        if customer is not None:
            raise S3Error("InvalidRequest", "The upload was not created with a customer "
                          "provided key: the encryption parameters are not applicable.")
        return None
    if mode == enc.MODE_C and customer is None:
        raise S3Error("InvalidRequest", "The upload was created using a customer provided "
                      "key: its parts must be sent with the same key.")
    try:
        data_key = enc.data_key(cached, gw.keyring, customer.key if customer else None)
    except enc.WrongKey as exc:
        raise S3Error("InvalidRequest", "The provided encryption parameters did not match "
                      "the ones used originally.") from exc
    except (enc.KeyUnavailable, enc.EncryptionError) as exc:
        raise _internal_error(bucket, key, exc) from exc
    return Write(enc.Sealing(dict(cached), data_key), _headers_of(mode, customer))


def forget_upload(bucket: str, upload_id: str) -> None:
    _UPLOADS.pop((bucket, upload_id), None)


def response_headers(info: ObjectInfo, customer: CustomerKey | None = None) -> dict[str, str]:
    """What a response about an object says of its encryption."""
    return _headers_of(enc.mode_of(info.meta.internal), customer)


# -- bucket default encryption ------------------------------------------------------------

def parse_configuration(body: bytes) -> dict[str, Any]:
    doc = xml.parse(body, "ServerSideEncryptionConfiguration")
    rules = xml.as_list(doc.get("Rule"))
    if len(rules) != 1 or not isinstance(rules[0], dict):
        raise S3Error("MalformedXML", "The configuration must hold exactly one Rule.")
    rule = rules[0]
    default = rule.get("ApplyServerSideEncryptionByDefault")
    if not isinstance(default, dict):
        raise S3Error("MalformedXML")
    algorithm = xml.text(default.get("SSEAlgorithm")).strip()
    if algorithm not in ALGORITHMS:
        raise S3Error("MalformedXML", "SSEAlgorithm must be AES256, aws:kms or aws:kms:dsse.")
    kms_key = xml.text(default.get("KMSMasterKeyID")).strip() or None
    if kms_key is not None and algorithm == "AES256":
        raise S3Error("InvalidArgument", "a KMSMasterKeyID is not applicable if the default "
                      "sse algorithm is not aws:kms or aws:kms:dsse",
                      ArgumentName="ApplyServerSideEncryptionByDefault")
    bucket_key = xml.text(rule.get("BucketKeyEnabled")).strip().lower()
    if bucket_key not in ("", "true", "false"):
        raise S3Error("MalformedXML")
    record: dict[str, Any] = {"algorithm": algorithm, "bucket_key": bucket_key == "true"}
    if kms_key is not None:
        record["kms_key_id"] = kms_key
    return record


def render_configuration(record: dict[str, Any]) -> bytes:
    default: dict[str, Any] = {"SSEAlgorithm": record["algorithm"]}
    if record.get("kms_key_id"):
        default["KMSMasterKeyID"] = record["kms_key_id"]
    return xml.render("ServerSideEncryptionConfiguration", {"Rule": {
        "ApplyServerSideEncryptionByDefault": default,
        "BucketKeyEnabled": bool(record.get("bucket_key"))}})
