"""The parsed form of one S3 request, shared by all handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDict

from ..backends.base import STORED_HEADERS, HashedBody, ObjectInfo, ObjectMeta
from ..errors import S3Error
from .auth import AuthContext
from .payload import PayloadReader, stored_content_encoding

MAX_SMALL_BODY = 2 * 1024 * 1024
MAX_USER_METADATA = 2048
# User metadata names the gateway keeps for itself in an S3 backend (backends.s3's
# INTERNAL_PREFIX): a client writing one could forge the gateway's own state.
RESERVED_METADATA_PREFIX = "s3lx-"


@dataclass
class S3Request:
    http: web.Request
    request_id: str
    bucket: str | None
    key: str | None
    query: MultiDict[str]
    auth: AuthContext
    # Set by access.authorize when the decision needs the object (its owner, its ACL):
    # handlers call check_object with the object they read, before answering from it.
    object_check: Callable[[ObjectInfo], Awaitable[None]] | None = None
    # The caller may not list the bucket: a missing key answers AccessDenied, as on S3
    # (a 404 would tell who may not look whether a key exists).
    deny_missing: bool = False

    async def check_object(self, info: ObjectInfo) -> None:
        """AccessDenied unless the caller may do this operation on the object `info`."""
        if self.object_check is not None:
            await self.object_check(info)

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self.http.headers

    @property
    def method(self) -> str:
        return self.http.method

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.http.headers.get(name, default)

    @property
    def resource(self) -> str:
        if self.bucket is None:
            return "/"
        return f"/{self.bucket}" + (f"/{self.key}" if self.key is not None else "")

    def payload(self, *, body_checksum_headers: bool = True) -> PayloadReader:
        """A verifying reader over the request body (signature, checksums, length)."""
        return PayloadReader(self.http.content, self.http.headers, self.auth, method=self.method,
                             body_checksum_headers=body_checksum_headers)

    async def read_small_body(self, limit: int = MAX_SMALL_BODY, *,
                              body_checksum_headers: bool = True) -> bytes:
        """Whole body of a small XML request, verified like any payload.

        `body_checksum_headers=False` for requests whose x-amz-checksum-* headers
        describe something else (CompleteMultipartUpload: the object).
        """
        reader = self.payload(body_checksum_headers=body_checksum_headers)
        if reader.decoded_length is not None and reader.decoded_length > limit:
            raise S3Error("MalformedXML", "The XML you provided was too large.")
        parts: list[bytes] = []
        size = 0
        async for chunk in reader:
            size += len(chunk)
            if size > limit:
                raise S3Error("MalformedXML", "The XML you provided was too large.")
            parts.append(chunk)
        return b"".join(parts)


def split_target(
    raw_path: str, host: str | None, domain: str | None
) -> tuple[str | None, str | None, str]:
    """(bucket, key, raw path without query) for path- and virtual-hosted style."""
    path = raw_path.split("?", 1)[0]
    bucket: str | None = None
    if domain and host:
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        hostname = hostname.lower().rstrip(".")
        suffix = "." + domain.lower()
        if hostname.endswith(suffix) and len(hostname) > len(suffix):
            bucket = hostname[: -len(suffix)]
    decoded = unquote(path, errors="strict")
    if bucket is not None:
        key = decoded[1:] if decoded.startswith("/") else decoded
        return bucket, (key or None), path
    stripped = decoded[1:] if decoded.startswith("/") else decoded
    if not stripped:
        return None, None, path
    name, sep, key = stripped.partition("/")
    return name, (key if sep and key else None), path


def parse_query(query_string: str) -> MultiDict[str]:
    return MultiDict(parse_qsl(query_string, keep_blank_values=True))


def meta_from_headers(req: S3Request) -> ObjectMeta:
    """Content type, x-amz-meta-*, stored headers and x-amz-tagging of a write."""
    meta = ObjectMeta()
    headers = req.headers
    meta.content_type = headers.get("Content-Type") or "binary/octet-stream"
    size = 0
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-amz-meta-"):
            user_key = lower[len("x-amz-meta-") :]
            size += len(user_key) + len(value.encode())
            if user_key in meta.metadata:
                meta.metadata[user_key] += "," + value
            else:
                meta.metadata[user_key] = value
        elif lower == "content-encoding":
            kept = stored_content_encoding(value)
            if kept:
                meta.headers[lower] = kept
        elif lower in STORED_HEADERS:
            meta.headers[lower] = value
    if size > MAX_USER_METADATA:
        raise S3Error(
            "MetadataTooLarge",
            Size=str(size),
            MaxSizeAllowed=str(MAX_USER_METADATA),
        )
    check_user_metadata(meta.metadata)
    tagging = headers.get("x-amz-tagging")
    if tagging:
        meta.tags = parse_tag_query(tagging)
    return meta


def check_user_metadata(metadata: dict[str, str]) -> None:
    """Refuse user metadata in the gateway's reserved namespace (names already lower case).

    Refused rather than dropped: a client that sends such a name (e.g. copying objects
    with their metadata out of a gateway's backend bucket) learns why at once, and
    nothing it stores is silently changed.
    """
    for name in metadata:
        if name.startswith(RESERVED_METADATA_PREFIX):
            raise S3Error(
                "InvalidArgument",
                f"User metadata names starting with \"{RESERVED_METADATA_PREFIX}\" are reserved "
                "for the gateway.",
                ArgumentName=f"x-amz-meta-{name}",
            )


def parse_tag_query(value: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for k, v in parse_qsl(value, keep_blank_values=True):
        if k in tags:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key")
        tags[k] = v
    check_tags(tags)
    return tags


def check_tags(tags: dict[str, str]) -> None:
    if len(tags) > 10:
        raise S3Error("InvalidTag", "Object tags cannot be greater than 10")
    for k, v in tags.items():
        if not k or len(k) > 128:
            raise S3Error("InvalidTag", "The TagKey you have provided is invalid")
        if len(v) > 256:
            raise S3Error("InvalidTag", "The TagValue you have provided is invalid")


class VerifiedBody(HashedBody):
    """Body chunks; on a clean end the computed checksums are recorded in `meta`."""

    def __init__(self, reader: PayloadReader, meta: ObjectMeta | None) -> None:
        self._reader = reader
        self._meta = meta

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._reader:
            yield chunk
        if self._meta is not None:
            self._meta.checksums.update(self._reader.checksums)

    @property
    def md5_hex(self) -> str:
        return self._reader.md5_hex

    @property
    def checksums(self) -> dict[str, str]:
        return self._reader.checksums


def verified_body(reader: PayloadReader, meta: ObjectMeta | None) -> VerifiedBody:
    return VerifiedBody(reader, meta)
