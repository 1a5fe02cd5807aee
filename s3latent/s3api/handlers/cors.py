"""Bucket CORS: Put/Get/DeleteBucketCors, the preflight OPTIONS, and headers on actual requests.

Web pages fetch generated images straight from a bucket; the browser asks the bucket first
(an unsigned `OPTIONS` preflight) and then checks the `Access-Control-*` headers of the
answer. Rules are evaluated as S3 evaluates them (docs/cors.md): in order, the first rule
whose AllowedOrigin matches the `Origin` (one `*` wildcard at most), whose AllowedMethod holds
the method and, for a preflight, whose AllowedHeader patterns cover every requested header.

The configuration is the bucket's "cors" record (`gw.store.get/put_bucket_config`). Every
request with an `Origin` reads it, so it is cached per process for `[cache] revalidate_after`
(`bucket_rules`), and a local write drops the entry at once.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from ...errors import S3Error
from ...singleflight import SingleFlight
from .. import xml
from ..names import check_bucket_name
from ..request import S3Request

if TYPE_CHECKING:
    from ..gateway import Gateway

log = logging.getLogger("s3latent.cors")

RECORD = "cors"
MAX_RULES = 100
MAX_CONFIG_BYTES = 64 * 1024
CORS_METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
_RULE_ELEMENTS = frozenset({"ID", "AllowedOrigin", "AllowedMethod", "AllowedHeader",
                            "ExposeHeader", "MaxAgeSeconds"})
_MAX_AGE_LIMIT = 2**31 - 1  # MaxAgeSeconds is an xsd:int
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"

NEEDS_ORIGIN = "Insufficient information. Origin request header needed."
NO_BUCKET = "CORSResponse: Bucket not found"
NOT_ENABLED = "CORSResponse: CORS is not enabled for this bucket."
# S3's own wording, its misspelling included: clients and tests compare it.
NOT_ALLOWED = ("CORSResponse: This CORS request is not allowed. This is usually because the "
               "evalution of Origin, request method / Access-Control-Request-Method or "
               "Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.")


@dataclass(frozen=True)
class CorsRule:
    """One CORSRule, validated."""

    allowed_origins: tuple[str, ...]
    allowed_methods: tuple[str, ...]
    allowed_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    rule_id: str | None = None

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"AllowedOrigin": list(self.allowed_origins),
                                  "AllowedMethod": list(self.allowed_methods)}
        if self.rule_id is not None:
            record["ID"] = self.rule_id
        if self.allowed_headers:
            record["AllowedHeader"] = list(self.allowed_headers)
        if self.expose_headers:
            record["ExposeHeader"] = list(self.expose_headers)
        if self.max_age is not None:
            record["MaxAgeSeconds"] = self.max_age
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CorsRule:
        max_age = record.get("MaxAgeSeconds")
        return cls(allowed_origins=tuple(record["AllowedOrigin"]),
                   allowed_methods=tuple(record["AllowedMethod"]),
                   allowed_headers=tuple(record.get("AllowedHeader", ())),
                   expose_headers=tuple(record.get("ExposeHeader", ())),
                   max_age=int(max_age) if max_age is not None else None,
                   rule_id=record.get("ID"))

    def matches(self, origin: str, method: str, headers: list[str] | None) -> bool:
        """Whether this rule allows `origin` to use `method` (and send `headers`, preflight)."""
        if method not in self.allowed_methods:
            return False
        if not any(wildcard_match(pattern, origin) for pattern in self.allowed_origins):
            return False
        if headers:
            patterns = [p.lower() for p in self.allowed_headers]
            return all(any(wildcard_match(p, h.lower()) for p in patterns) for h in headers)
        return True

    def response_headers(self, origin: str, requested_headers: list[str] | None
                         ) -> dict[str, str]:
        """The Access-Control-* headers S3 answers with when this rule matched."""
        headers: dict[str, str] = {}
        if "*" in self.allowed_origins:
            headers["Access-Control-Allow-Origin"] = "*"
        else:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Allow-Credentials"] = "true"
        headers["Access-Control-Allow-Methods"] = ", ".join(self.allowed_methods)
        if requested_headers:
            headers["Access-Control-Allow-Headers"] = ", ".join(requested_headers)
        if self.expose_headers:
            headers["Access-Control-Expose-Headers"] = ", ".join(self.expose_headers)
        if self.max_age is not None:
            headers["Access-Control-Max-Age"] = str(self.max_age)
        headers["Vary"] = VARY
        return headers


def wildcard_match(pattern: str, value: str) -> bool:
    """`pattern` with at most one `*` (any run of characters, the empty one included)."""
    prefix, star, suffix = pattern.partition("*")
    if not star:
        return pattern == value
    return (len(value) >= len(prefix) + len(suffix)
            and value.startswith(prefix) and value.endswith(suffix))


def find_rule(rules: list[CorsRule], origin: str, method: str,
              headers: list[str] | None = None) -> CorsRule | None:
    """The first rule that allows the request, in the configuration's order."""
    for rule in rules:
        if rule.matches(origin, method, headers):
            return rule
    return None


# -- the configuration document ------------------------------------------------------------

def _texts(rule: dict[str, Any], name: str) -> list[str]:
    values = []
    for item in xml.as_list(rule.get(name)):
        if isinstance(item, dict) and set(item) - {"#text"}:
            raise S3Error("MalformedXML")  # an element where text belongs
        values.append(xml.text(item))
    return values


def _one_text(rule: dict[str, Any], name: str) -> str | None:
    values = _texts(rule, name)
    if len(values) > 1:
        raise S3Error("MalformedXML")
    return values[0] if values else None


def _check_wildcards(values: list[str], element: str) -> None:
    for value in values:
        if value.count("*") > 1:
            raise S3Error("InvalidRequest",
                          f'{element} "{value}" can not have more than one wildcard.')


def parse_configuration(body: bytes) -> list[CorsRule]:
    """A PutBucketCors body as rules, refused with the errors S3 gives."""
    if len(body) > MAX_CONFIG_BYTES:
        raise S3Error("MalformedXML", "The XML you provided was too large.")
    doc = xml.parse(body, "CORSConfiguration")
    if set(doc) - {"CORSRule", "#text"} or (doc.get("#text") or "").strip():
        raise S3Error("MalformedXML")
    raw_rules = xml.as_list(doc.get("CORSRule"))
    if not raw_rules:
        raise S3Error("MalformedXML")
    if len(raw_rules) > MAX_RULES:
        raise S3Error("InvalidRequest", f"The number of CORS rules should not exceed allowed "
                      f"limit of {MAX_RULES} rules.")
    rules = []
    for raw in raw_rules:
        if not isinstance(raw, dict):
            raise S3Error("MalformedXML")
        if set(raw) - _RULE_ELEMENTS - {"#text"} or (raw.get("#text") or "").strip():
            raise S3Error("MalformedXML")
        origins = _texts(raw, "AllowedOrigin")
        methods = _texts(raw, "AllowedMethod")
        if not origins or not methods:
            raise S3Error("MalformedXML")
        for method in methods:
            if method not in CORS_METHODS:
                raise S3Error("InvalidRequest", "Found unsupported HTTP method in CORS config. "
                              f"Unsupported method is {method}")
        if any(not origin for origin in origins):
            raise S3Error("MalformedXML")
        _check_wildcards(origins, "AllowedOrigin")
        allowed_headers = _texts(raw, "AllowedHeader")
        if any(not header for header in allowed_headers):
            raise S3Error("MalformedXML")
        _check_wildcards(allowed_headers, "AllowedHeader")
        expose = _texts(raw, "ExposeHeader")
        for header in expose:
            if "*" in header:
                raise S3Error("InvalidRequest", f'ExposeHeader "{header}" contains wildcard. '
                              "We currently do not support wildcard for ExposeHeader.")
            if not header:
                raise S3Error("MalformedXML")
        max_age_text = _one_text(raw, "MaxAgeSeconds")
        max_age = None
        if max_age_text is not None:
            try:
                max_age = int(max_age_text.strip())
            except ValueError as exc:
                raise S3Error("MalformedXML") from exc
            if not 0 <= max_age <= _MAX_AGE_LIMIT:
                raise S3Error("MalformedXML")
        rule_id = _one_text(raw, "ID")
        rules.append(CorsRule(tuple(origins), tuple(methods), tuple(allowed_headers),
                              tuple(expose), max_age, rule_id))
    return rules


def render_configuration(rules: list[CorsRule]) -> bytes:
    """GetBucketCors's document, elements in the order S3 writes them."""
    out = []
    for rule in rules:
        item: dict[str, Any] = {}
        if rule.rule_id is not None:
            item["ID"] = rule.rule_id
        item["AllowedHeader"] = list(rule.allowed_headers) or None
        item["AllowedMethod"] = list(rule.allowed_methods)
        item["AllowedOrigin"] = list(rule.allowed_origins)
        item["ExposeHeader"] = list(rule.expose_headers) or None
        item["MaxAgeSeconds"] = rule.max_age
        out.append(item)
    return xml.render("CORSConfiguration", {"CORSRule": out})


# -- the per-process record cache ----------------------------------------------------------

class _NoBucket:
    """The cached answer for a bucket that does not exist."""


NO_SUCH_BUCKET = _NoBucket()
Lookup = list[CorsRule] | None | _NoBucket


class _Records:
    """One gateway's cached CORS records: bucket -> (expiry, lookup)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, Lookup]] = {}
        # Bumped by every local write: a read that started before it does not cache its
        # (possibly older) answer after it.
        self.generation: dict[str, int] = {}
        self.flight: SingleFlight[tuple[str, int], Lookup] = SingleFlight()


_records: weakref.WeakKeyDictionary[Any, _Records] = weakref.WeakKeyDictionary()
_MAX_ENTRIES = 10_000  # bounded: buckets are few, but names asked for are not


def _cache(gw: Gateway) -> _Records:
    records = _records.get(gw)
    if records is None:
        records = _records[gw] = _Records()
    return records


def forget(gw: Gateway, bucket: str) -> None:
    """Drop the cached record of `bucket` (its CORS, or the bucket itself, changed here)."""
    records = _cache(gw)
    records.entries.pop(bucket, None)
    records.generation[bucket] = records.generation.get(bucket, 0) + 1


async def bucket_rules(gw: Gateway, bucket: str) -> Lookup:
    """The bucket's rules, None without a configuration, NO_SUCH_BUCKET without the bucket.

    Cached for `[cache] revalidate_after` seconds: a change made through another gateway of a
    fleet is seen within that bound, one made here at once. Concurrent misses share one read.
    The lead may replace this with the shared bucket-records cache; nothing else here reads
    the record.
    """
    records = _cache(gw)
    hit = records.entries.get(bucket)
    if hit is not None and time.monotonic() < hit[0]:
        return hit[1]

    generation = records.generation.get(bucket, 0)

    async def read() -> Lookup:
        value: Lookup
        try:
            value = _rules_from_record(await gw.store.get_bucket_config(bucket, RECORD))
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise
            value = NO_SUCH_BUCKET
        ttl = gw.config.cache.revalidate_after
        if ttl > 0 and records.generation.get(bucket, 0) == generation:
            if len(records.entries) >= _MAX_ENTRIES:
                records.entries.clear()
            records.entries[bucket] = (time.monotonic() + ttl, value)
        return value

    # Keyed by generation too: a caller after a local write never joins a read from before it.
    value, _ = await records.flight.run((bucket, generation), read)
    return value


def _rules_from_record(record: Any) -> list[CorsRule] | None:
    if not isinstance(record, dict) or not record.get("rules"):
        return None
    return [CorsRule.from_record(r) for r in record["rules"]]


# -- handlers ------------------------------------------------------------------------------

async def put_bucket_cors(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """Replace the bucket's CORS configuration (validated first, as S3 does)."""
    assert req.bucket is not None
    try:
        rules = parse_configuration(await req.read_small_body(MAX_CONFIG_BYTES))
    except S3Error:
        # S3 looks the bucket up first: NoSuchBucket, not a refusal that hints it exists.
        await gw.store.head_bucket(req.bucket)
        raise
    await gw.store.put_bucket_config(req.bucket, RECORD,
                                     {"rules": [r.to_record() for r in rules]})
    forget(gw, req.bucket)
    return web.Response(status=200)


async def get_bucket_cors(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    rules = _rules_from_record(await gw.store.get_bucket_config(req.bucket, RECORD))
    if not rules:
        raise S3Error("NoSuchCORSConfiguration", resource=req.resource, BucketName=req.bucket)
    return web.Response(body=render_configuration(rules), content_type="application/xml")


async def delete_bucket_cors(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """Idempotent, as on S3: 204 whether or not there was a configuration."""
    assert req.bucket is not None
    await gw.store.put_bucket_config(req.bucket, RECORD, None)
    forget(gw, req.bucket)
    return web.Response(status=204)


def _requested_headers(value: str | None) -> list[str]:
    if not value:
        return []
    return [h.strip() for h in value.split(",") if h.strip()]


async def preflight(gw: Gateway, request: web.Request, bucket: str | None,
                    key: str | None) -> web.StreamResponse:
    """OPTIONS: unauthenticated (browsers never sign a preflight); the object is not read."""
    origin = request.headers.get("Origin")
    if origin is None:
        raise S3Error("BadRequest", NEEDS_ORIGIN)
    method = request.headers.get("Access-Control-Request-Method")
    if method not in CORS_METHODS:
        raise S3Error("BadRequest", f"Invalid Access-Control-Request-Method: {method or 'null'}")
    extra = {"Method": method, "ResourceType": "OBJECT" if key is not None else "BUCKET"}
    rules: Lookup = NO_SUCH_BUCKET
    if bucket is not None and _client_bucket(gw, bucket):
        rules = await bucket_rules(gw, bucket)
    if isinstance(rules, _NoBucket):
        raise S3Error("AccessForbidden", NO_BUCKET, **extra)
    if not rules:
        raise S3Error("AccessForbidden", NOT_ENABLED, **extra)
    requested = _requested_headers(request.headers.get("Access-Control-Request-Headers"))
    rule = find_rule(rules, origin, method, requested)
    if rule is None:
        raise S3Error("AccessForbidden", NOT_ALLOWED, **extra)
    return web.Response(status=200, headers=rule.response_headers(origin, requested))


def _client_bucket(gw: Gateway, bucket: str) -> bool:
    """A name a client's bucket can have (not the backend's meta bucket, not a bad name)."""
    if bucket == gw.store.meta_bucket:
        return False
    try:
        check_bucket_name(bucket)
    except S3Error:
        return False
    return True


def note_bucket(gw: Gateway, request: web.Request, bucket: str) -> None:
    """Mark an actual request for Access-Control-* headers on whatever it is answered with."""
    if "Origin" in request.headers and _client_bucket(gw, bucket):
        request["cors_bucket"] = bucket


async def add_response_headers(gw: Gateway, request: web.Request, bucket: str,
                               headers: CIMultiDict[str]) -> None:
    """Access-Control-* on an actual (non-preflight) request's answer, errors included.

    Only for requests with an `Origin` whose bucket has a rule that matches; evaluated with
    the request's method (the Access-Control-Request-Method header when a client sends one,
    as Ceph's s3-tests expect; browsers cannot set it on an actual request). Never fails the
    response it decorates: a backend failure reading the record means no headers.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return
    try:
        rules = await bucket_rules(gw, bucket)
    except Exception:
        log.warning("CORS record of %s unreadable; no CORS headers", bucket, exc_info=True)
        return
    if isinstance(rules, _NoBucket) or not rules:
        return
    method = request.headers.get("Access-Control-Request-Method") or request.method
    rule = find_rule(rules, origin, method)
    if rule is not None:
        for name, value in rule.response_headers(origin, None).items():
            headers[name] = value
