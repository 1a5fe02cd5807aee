"""Service and bucket operations, including object listings."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from ...errors import S3Error
from .. import access, xml
from .. import acl as acls
from ..names import check_bucket_name
from ..request import S3Request

if TYPE_CHECKING:
    from ..gateway import Gateway

# Sorts after every valid key character: skipping a rolled-up common prefix.
_AFTER_PREFIX = "\U0010ffff"

# Bucket configuration GETs that have a truthful "there is none" answer.
NOT_CONFIGURED = {
    "website": "NoSuchWebsiteConfiguration",
    "encryption": "ServerSideEncryptionConfigurationNotFoundError",
    "object-lock": "ObjectLockConfigurationNotFoundError",
    "publicAccessBlock": "NoSuchPublicAccessBlockConfiguration",
    "ownershipControls": "OwnershipControlsNotFoundError",
}


def _xml(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/xml",
                        headers=headers)


async def list_buckets(gw: Gateway, req: S3Request) -> web.StreamResponse:
    buckets = await gw.store.list_buckets()
    visible = set(await access.visible_buckets(gw, req, [b.name for b in buckets]))
    buckets = [b for b in buckets if b.name in visible]
    body = xml.render(
        "ListAllMyBucketsResult",
        {
            "Owner": access.caller_element(gw, req),
            "Buckets": {
                "Bucket": [{"Name": b.name, "CreationDate": b.created} for b in buckets]
            }
            if buckets
            else "",
        },
    )
    return _xml(body)


async def create_bucket(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    check_bucket_name(req.bucket)
    creator = access.caller_of(gw, req.auth).user
    assert creator is not None  # access.authorize: anonymous users create nothing
    acl = acls.from_headers(req.headers, gw.config, owner=creator.id, bucket_owner=creator.id,
                            for_bucket=True)
    object_lock = req.header("x-amz-bucket-object-lock-enabled", "").lower() == "true"
    body = await req.read_small_body()
    if body.strip():
        doc = xml.parse(body, "CreateBucketConfiguration")
        location = xml.text(doc.get("LocationConstraint")).strip()
        if location and location != gw.config.region:
            raise S3Error(
                "IllegalLocationConstraintException",
                f"The {location} location constraint is incompatible with the region "
                f"specific endpoint this request was sent to.",
            )
    if object_lock:
        await gw.store.create_bucket(req.bucket, owner=req.auth.access_key, object_lock=True)
    else:
        await gw.store.create_bucket(req.bucket, owner=req.auth.access_key)
    if acl is not None and acl != acls.private(creator.id):
        await gw.store.put_bucket_config(req.bucket, "acl", acl.to_json())
    return web.Response(status=200, headers={"Location": f"/{req.bucket}"})


async def head_bucket(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    return web.Response(status=200, headers={"x-amz-bucket-region": gw.config.region})


async def delete_bucket(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    await gw.store.delete_bucket(req.bucket)
    return web.Response(status=204)


async def get_bucket_location(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    region = gw.config.region
    location = "" if region == "us-east-1" else region
    return _xml(xml.render("LocationConstraint", {"#text": location}))


MAX_BUCKET_TAGS = 50
_TAG_PUNCTUATION = frozenset(" +-=._:/@")


def _valid_tag_text(text: str) -> bool:
    """Letters, digits, spaces and + - = . _ : / @ (AWS's tag character set)."""
    return all(c.isalnum() or c in _TAG_PUNCTUATION or c.isspace() for c in text)


def parse_bucket_tags(body: bytes) -> dict[str, str]:
    """A PutBucketTagging body as {key: value}, validated as S3 validates bucket tags."""
    doc = xml.parse(body, "Tagging")
    if "TagSet" not in doc:
        raise S3Error("MalformedXML")
    tag_set = doc.get("TagSet") or {}
    if not isinstance(tag_set, dict):
        tag_set = {}
    tags: dict[str, str] = {}
    for tag in xml.as_list(tag_set.get("Tag")):
        if not isinstance(tag, dict) or "Key" not in tag or "Value" not in tag:
            raise S3Error("MalformedXML")
        key, value = xml.text(tag["Key"]), xml.text(tag["Value"])
        if key in tags:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key",
                          TagKey=key)
        if not key or len(key) > 128 or not _valid_tag_text(key):
            raise S3Error("InvalidTag", "The TagKey you have provided is invalid", TagKey=key)
        if key.lower().startswith("aws:"):
            raise S3Error("InvalidTag", "Your TagKey cannot be prefixed with aws:", TagKey=key)
        if len(value) > 256 or not _valid_tag_text(value):
            raise S3Error("InvalidTag", "The TagValue you have provided is invalid",
                          TagKey=key, TagValue=value)
        tags[key] = value
    if len(tags) > MAX_BUCKET_TAGS:
        raise S3Error("InvalidTag", f"Bucket tag count cannot be greater than "
                      f"{MAX_BUCKET_TAGS}")
    return tags


async def get_bucket_tagging(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """The tag set sorted by key, as object tags are; NoSuchTagSet when there is none."""
    assert req.bucket is not None
    tags = await gw.store.get_bucket_tags(req.bucket)
    if not tags:
        raise S3Error("NoSuchTagSet", resource=req.resource, BucketName=req.bucket)
    tag_list = [{"Key": k, "Value": tags[k]} for k in sorted(tags)]
    return _xml(xml.render("Tagging", {"TagSet": {"Tag": tag_list}}))


async def put_bucket_tagging(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """Replaces the bucket's tag set; an empty TagSet removes it."""
    assert req.bucket is not None
    tags = parse_bucket_tags(await req.read_small_body())
    await gw.store.put_bucket_tags(req.bucket, tags or None)
    return web.Response(status=204)


async def delete_bucket_tagging(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """Idempotent, as on S3: 204 whether or not the bucket had tags."""
    assert req.bucket is not None
    await gw.store.put_bucket_tags(req.bucket, None)
    return web.Response(status=204)


async def get_bucket_not_configured(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    for param, code in NOT_CONFIGURED.items():
        if param in req.query:
            raise S3Error(code, resource=req.resource, BucketName=req.bucket)
    raise AssertionError("routed without a known subresource")


def _int_param(req: S3Request, name: str, default: int, maximum: int) -> int:
    raw = req.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within "
                      "integer range", ArgumentName=name, ArgumentValue=raw) from exc
    if value < 0:
        raise S3Error("InvalidArgument", f"Argument {name} must be an integer between 0 and "
                      "2147483647", ArgumentName=name, ArgumentValue=raw)
    return min(value, maximum)


def encode_token(start_after: str) -> str:
    return base64.urlsafe_b64encode(start_after.encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      ArgumentName="continuation-token") from exc


def _start_after(marker: str | None, delimiter: str | None) -> str | None:
    """A marker that is a rolled-up prefix skips everything under that prefix."""
    if marker and delimiter and marker.endswith(delimiter):
        return marker + _AFTER_PREFIX
    return marker or None


def _key_encoder(encoding: str | None) -> Callable[[str], str]:
    """encoding-type=url percent-encodes keys and prefixes in listings; nothing else is valid."""
    if encoding is None:
        return lambda s: s
    if encoding.lower() != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      ArgumentName="encoding-type", ArgumentValue=encoding)
    return lambda s: quote(s, safe="/")


async def list_objects(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    q = req.query
    v2 = q.get("list-type") == "2"
    if "list-type" in q and q["list-type"] not in ("1", "2"):
        raise S3Error("InvalidArgument", "Invalid List Type specified",
                      ArgumentName="list-type", ArgumentValue=q["list-type"])
    encoding = q.get("encoding-type")
    enc = _key_encoder(encoding)
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter") or None
    max_keys = _int_param(req, "max-keys", 1000, 1000)

    if v2:
        token = q.get("continuation-token")
        if token:  # an empty token lists from the start, as S3 does
            start = decode_token(token)
        else:
            start = _start_after(q.get("start-after"), delimiter)
    else:
        start = _start_after(q.get("marker"), delimiter)

    await gw.store.head_bucket(req.bucket)
    if max_keys == 0:
        entries: list[Any] = []
        prefixes: list[str] = []
        truncated, last = False, None
    else:
        page = await gw.store.list_objects(req.bucket, prefix=prefix, delimiter=delimiter,
                                     start_after=start, max_keys=max_keys)
        entries, prefixes = page.entries, page.common_prefixes
        truncated, last = page.is_truncated, page.next_start_after
        if len(entries) + len(prefixes) > max_keys:
            # Some stores count keys and prefixes apart; S3 counts them together.
            merged = sorted([(e.key, e) for e in entries] + [(p, None) for p in prefixes],
                            key=lambda item: item[0].encode())[:max_keys]
            entries = [e for _, e in merged if e is not None]
            prefixes = [k for k, e in merged if e is None]
            truncated, last = True, merged[-1][0]

    contents = []
    fetch_owner = not v2 or q.get("fetch-owner", "").lower() == "true"
    owner = await access.owner_element(gw, req.bucket) if fetch_owner and entries else None
    for e in entries:
        item: dict[str, Any] = {
            "Key": enc(e.key),
            "LastModified": e.last_modified,
            "ETag": f'"{e.etag}"',
            "Size": e.size,
            "StorageClass": "STANDARD",
        }
        if owner is not None:
            item["Owner"] = owner
        contents.append(item)
    # v1 echoes Prefix as sent (clients do not decode it there); v2 encodes it.
    result: dict[str, Any] = {"Name": req.bucket, "Prefix": enc(prefix) if v2 else prefix}
    if v2:
        if "start-after" in q:
            result["StartAfter"] = enc(q["start-after"])
        if "continuation-token" in q:
            result["ContinuationToken"] = q["continuation-token"]
        result["KeyCount"] = len(contents) + len(prefixes)
    else:
        result["Marker"] = enc(q.get("marker", ""))
    result["MaxKeys"] = max_keys
    if delimiter:
        result["Delimiter"] = enc(delimiter)
    if encoding:
        result["EncodingType"] = "url"
    result["IsTruncated"] = truncated
    if truncated and last is not None:
        next_start = _start_after(last, delimiter) if last in prefixes else last
        if v2:
            result["NextContinuationToken"] = encode_token(next_start or last)
        else:
            result["NextMarker"] = enc(last)
    result["Contents"] = contents or None
    result["CommonPrefixes"] = [{"Prefix": enc(p)} for p in prefixes] or None
    root = "ListBucketResult"
    return _xml(xml.render(root, result))
