"""Put/Get/DeleteBucketLifecycleConfiguration, and the x-amz-expiration header.

A configuration is validated as S3 validates it (docs/lifecycle.md) and stored, rules in
S3's XML shape, as the bucket's "lifecycle" record; objects/lifecycle.py reads it (the
expiry worker, the expiration header). Transitions are refused with 501: the gateway has one
storage class, so a rule moving objects elsewhere would be a promise never kept.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...backends.base import ObjectInfo
from ...errors import S3Error
from ...objects.lifecycle import RECORD, Lifecycle, new_rule_id
from .. import xml
from ..request import S3Request

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger(__name__)

MAX_RULES = 1000
MAX_ID = 255
MAX_NEWER_NONCURRENT = 100
_RULE_ELEMENTS = frozenset({"ID", "Prefix", "Filter", "Status", "Expiration", "Transition",
                            "NoncurrentVersionTransition", "NoncurrentVersionExpiration",
                            "AbortIncompleteMultipartUpload"})
_FILTER_ELEMENTS = ("Prefix", "Tag", "ObjectSizeGreaterThan", "ObjectSizeLessThan", "And")
# The classes S3 can transition to; any other name fails its schema (MalformedXML).
TRANSITION_CLASSES = frozenset({"GLACIER", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                                "DEEP_ARCHIVE", "GLACIER_IR"})


def _element(parent: dict[str, Any], name: str) -> Any:
    """A child that may appear once (a repeated one is not S3's schema)."""
    value = parent.get(name)
    if isinstance(value, list):
        raise S3Error("MalformedXML")
    return value


def _integer(value: Any) -> int:
    """An xsd:int / xsd:long: anything else fails the schema."""
    raw = xml.text(value).strip()
    try:
        return int(raw, 10)
    except ValueError as exc:
        raise S3Error("MalformedXML") from exc


def _positive(value: Any, message: str) -> int:
    number = _integer(value)
    if number <= 0:
        raise S3Error("InvalidArgument", message)
    return number


def _date(value: Any) -> str:
    """An ISO 8601 date at midnight UTC, stored as S3 answers it on GET."""
    raw = xml.text(value).strip()
    try:
        if len(raw) == 10:
            when = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
        else:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise S3Error("InvalidArgument", "'Date' must be in ISO 8601 format") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    if (when.hour, when.minute, when.second, when.microsecond) != (0, 0, 0, 0):
        raise S3Error("InvalidArgument", "'Date' must be at midnight GMT")
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _tag(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or "Key" not in value or "Value" not in value or \
            set(value) - {"Key", "Value"}:
        raise S3Error("MalformedXML")
    key, val = xml.text(value["Key"]), xml.text(value["Value"])
    if not key or len(key) > 128 or len(val) > 256:
        raise S3Error("InvalidTag", "The TagKey you have provided is invalid", TagKey=key)
    return {"Key": key, "Value": val}


def _filter(value: Any) -> tuple[dict[str, Any], bool, bool]:
    """(stored Filter, has tags, has size bounds)."""
    if value is None or isinstance(value, str):  # <Filter/> or <Filter></Filter>
        if value is not None and value.strip():
            raise S3Error("MalformedXML")
        return {}, False, False
    if not isinstance(value, dict) or set(value) - set(_FILTER_ELEMENTS):
        raise S3Error("MalformedXML")
    if not value:
        return {}, False, False
    if len(value) == 1:
        name, content = next(iter(value.items()))
        if isinstance(content, list):
            raise S3Error("MalformedXML")
        if name == "Prefix":
            return {"Prefix": xml.text(content)}, False, False
        if name == "Tag":
            return {"Tag": _tag(content)}, True, False
        if name in ("ObjectSizeGreaterThan", "ObjectSizeLessThan"):
            return {name: _size(name, content)}, False, True
    elif "And" in value:
        raise S3Error("MalformedXML")  # And holds the predicates, none beside it
    else:
        # Several predicates without And: S3's schema wants them inside And; RGW (and the
        # s3-tests) read them as an And. Accepted with that meaning, stored as an And.
        content = value
        if isinstance(content.get("Tag"), list):
            raise S3Error("MalformedXML")
        tags, both = _and(content)
        return {"And": both}, tags, any(b in both for b in ("ObjectSizeGreaterThan",
                                                           "ObjectSizeLessThan"))
    tags, both = _and(content)
    return {"And": both}, tags, any(b in both for b in ("ObjectSizeGreaterThan",
                                                       "ObjectSizeLessThan"))


def _and(content: Any) -> tuple[bool, dict[str, Any]]:
    """And: a prefix, tags and size bounds, all of which must hold (has tags, stored)."""
    if not isinstance(content, dict) or \
            set(content) - {"Prefix", "Tag", "ObjectSizeGreaterThan", "ObjectSizeLessThan"}:
        raise S3Error("MalformedXML")
    both: dict[str, Any] = {}
    if "Prefix" in content:
        both["Prefix"] = xml.text(_element(content, "Prefix"))
    tags = [_tag(t) for t in xml.as_list(content.get("Tag"))]
    if len({t["Key"] for t in tags}) != len(tags):
        raise S3Error("InvalidRequest", "Duplicate Tag Keys are not allowed.")
    if tags:
        both["Tag"] = tags
    for bound in ("ObjectSizeGreaterThan", "ObjectSizeLessThan"):
        if bound in content:
            both[bound] = _size(bound, _element(content, bound))
    if not both:
        raise S3Error("MalformedXML")
    gt, lt = both.get("ObjectSizeGreaterThan"), both.get("ObjectSizeLessThan")
    if gt is not None and lt is not None and gt >= lt:
        raise S3Error("InvalidRequest", "ObjectSizeGreaterThan must be less than "
                      "ObjectSizeLessThan")
    return bool(tags), both


def _size(name: str, value: Any) -> int:
    size = _integer(value)
    if size < 0 or (name == "ObjectSizeLessThan" and size == 0):
        raise S3Error("InvalidArgument", f"'{name}' must be a positive number")
    return size


def _expiration(value: Any, tagged: bool) -> dict[str, Any]:
    if not isinstance(value, dict) or not value or \
            set(value) - {"Days", "Date", "ExpiredObjectDeleteMarker"}:
        raise S3Error("MalformedXML")
    if len(value) != 1:
        raise S3Error("MalformedXML")  # Days, Date or ExpiredObjectDeleteMarker: one of them
    name, content = next(iter(value.items()))
    if isinstance(content, list):
        raise S3Error("MalformedXML")
    if name == "Days":
        return {"Days": _positive(content, "'Days' for Expiration action must be a positive "
                                  "integer")}
    if name == "Date":
        return {"Date": _date(content)}
    flag = xml.text(content).strip().lower()
    if flag not in ("true", "false"):
        raise S3Error("MalformedXML")
    if tagged and flag == "true":
        raise S3Error("InvalidRequest", "ExpiredObjectDeleteMarker cannot be specified with "
                      "object tags")
    return {"ExpiredObjectDeleteMarker": flag == "true"}


def _transitions(rule: dict[str, Any]) -> None:
    """Validated, then refused: there is no storage class to move objects to."""
    for name in ("Transition", "NoncurrentVersionTransition"):
        for item in xml.as_list(rule.get(name)):
            if not isinstance(item, dict):
                raise S3Error("MalformedXML")
            if "Date" in item:
                _date(item["Date"])
            for days in ("Days", "NoncurrentDays"):
                if days in item:
                    _integer(item[days])
            if xml.text(item.get("StorageClass")).strip() not in TRANSITION_CLASSES:
                raise S3Error("MalformedXML")
    if any(name in rule for name in ("Transition", "NoncurrentVersionTransition")):
        raise S3Error("NotImplemented", "Lifecycle transitions are not supported: s3latent "
                      "keeps every object in the STANDARD storage class.")


def parse_lifecycle(body: bytes) -> dict[str, Any]:
    """A PutBucketLifecycleConfiguration body as the stored record ({"Rule": [...]})."""
    doc = xml.parse(body, "LifecycleConfiguration")
    if set(doc) - {"Rule"}:
        raise S3Error("MalformedXML")
    raw_rules = xml.as_list(doc.get("Rule"))
    if not raw_rules or len(raw_rules) > MAX_RULES:
        raise S3Error("MalformedXML")
    rules, ids = [], set()
    for raw in raw_rules:
        if not isinstance(raw, dict) or set(raw) - _RULE_ELEMENTS:
            raise S3Error("MalformedXML")
        rule: dict[str, Any] = {}
        rule_id = xml.text(_element(raw, "ID")) if "ID" in raw else ""
        if len(rule_id) > MAX_ID:
            raise S3Error("InvalidArgument", "ID length should not exceed allowed limit of "
                          "255")
        rule_id = rule_id or new_rule_id()
        if rule_id in ids:
            raise S3Error("InvalidArgument", "Rule ID must be unique. Found same ID for more "
                          "than one rule")
        ids.add(rule_id)
        rule["ID"] = rule_id
        if ("Filter" in raw) == ("Prefix" in raw):
            raise S3Error("MalformedXML")  # Filter or the older top-level Prefix: exactly one
        tagged = sized = False
        if "Filter" in raw:
            rule["Filter"], tagged, sized = _filter(_element(raw, "Filter"))
        else:
            rule["Prefix"] = xml.text(_element(raw, "Prefix"))
        status = xml.text(_element(raw, "Status"))
        if status not in ("Enabled", "Disabled"):
            raise S3Error("MalformedXML")
        rule["Status"] = status
        if "Expiration" in raw:
            rule["Expiration"] = _expiration(_element(raw, "Expiration"), tagged)
        if "NoncurrentVersionExpiration" in raw:
            nc = _element(raw, "NoncurrentVersionExpiration")
            if not isinstance(nc, dict) or "NoncurrentDays" not in nc or \
                    set(nc) - {"NoncurrentDays", "NewerNoncurrentVersions"}:
                raise S3Error("MalformedXML")
            out: dict[str, Any] = {"NoncurrentDays": _positive(
                nc["NoncurrentDays"], "'NoncurrentDays' for NoncurrentVersionExpiration action "
                "must be a positive integer")}
            if "NewerNoncurrentVersions" in nc:
                newer = _integer(nc["NewerNoncurrentVersions"])
                if not 1 <= newer <= MAX_NEWER_NONCURRENT:
                    raise S3Error("InvalidArgument", "NewerNoncurrentVersions must be between 1 "
                                  "and 100")
                out["NewerNoncurrentVersions"] = newer
            rule["NoncurrentVersionExpiration"] = out
        if "AbortIncompleteMultipartUpload" in raw:
            abort = _element(raw, "AbortIncompleteMultipartUpload")
            if not isinstance(abort, dict) or set(abort) != {"DaysAfterInitiation"}:
                raise S3Error("MalformedXML")
            if tagged or sized:
                raise S3Error("InvalidRequest", "AbortIncompleteMultipartUpload cannot be "
                              "specified with Tags or object size filters.")
            rule["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": _positive(
                abort["DaysAfterInitiation"], "'DaysAfterInitiation' for "
                "AbortIncompleteMultipartUpload action must be a positive integer")}
        _transitions(raw)
        if not any(k in rule for k in ("Expiration", "NoncurrentVersionExpiration",
                                       "AbortIncompleteMultipartUpload")):
            raise S3Error("InvalidRequest", "At least one action needs to be specified in a "
                          "rule")
        rules.append(rule)
    return {"Rule": rules}


async def put_bucket_lifecycle(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    record = parse_lifecycle(await req.read_small_body())
    await gw.store.head_bucket(req.bucket)
    await gw.store.put_bucket_config(req.bucket, RECORD, record)
    return web.Response(status=200)


async def get_bucket_lifecycle(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    record = await gw.store.get_bucket_config(req.bucket, RECORD)
    if not isinstance(record, dict) or not record.get("Rule"):
        raise S3Error("NoSuchLifecycleConfiguration", resource=req.resource,
                      BucketName=req.bucket)
    return web.Response(body=xml.render("LifecycleConfiguration", record),
                        content_type="application/xml")


async def delete_bucket_lifecycle(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """204 whether or not there was one, as S3 answers."""
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    await gw.store.put_bucket_config(req.bucket, RECORD, None)
    return web.Response(status=204)


async def expiration_headers(gw: Gateway, bucket: str, info: ObjectInfo,
                             tags: dict[str, str] | None = None) -> dict[str, str]:
    """`x-amz-expiration` for a current object an enabled Expiration rule matches.

    Never fails the request it decorates: a record or tag read that fails leaves the
    header out (logged)."""
    try:
        config = Lifecycle.from_record(await gw.store.get_bucket_config(bucket, RECORD),
                                       gw.config.lifecycle_day_s)
        if config is None or not any(r.expire_days is not None or r.expire_date is not None
                                     for r in config.enabled):
            return {}
        if tags is None and config.needs_tags():
            tags = dict(await gw.store.get_tags(bucket, info.key))
        return config.expiration_header(info, tags)
    except S3Error as exc:
        log.info("no x-amz-expiration for %s/%s: %s", bucket, info.key, exc.code)
        return {}
