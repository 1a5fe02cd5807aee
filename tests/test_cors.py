"""Bucket CORS: configuration through boto3, preflights and actual requests as a browser sends them.

Against a real gateway process on the local backend and over SeaweedFS (the `gateway`
fixture); the browser side is plain unsigned HTTP (aiohttp), presigned URLs where the
request must carry a credential, as a web page's fetch of a private image does.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from s3latent.errors import S3Error
from s3latent.s3api.handlers import cors
from s3latent.s3api.handlers.cors import (
    NOT_ALLOWED,
    CorsRule,
    find_rule,
    parse_configuration,
    wildcard_match,
)
from tests.gateway import ACCESS_KEY, SECRET_KEY, GatewayProcess
from tests.inprocess import serve_gateway
from tests.test_latent_objects import latent_gateway, make_pair, tiny_model, wait_latent  # noqa: F401

VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"
RULES = [
    {"ID": "app writes", "AllowedOrigins": ["https://app.example.com"],
     "AllowedMethods": ["PUT", "POST", "DELETE"], "AllowedHeaders": ["*"]},
    {"AllowedOrigins": ["https://*.example.org"], "AllowedMethods": ["GET", "HEAD"],
     "AllowedHeaders": ["x-amz-*", "Range"], "ExposeHeaders": ["ETag", "x-amz-request-id"],
     "MaxAgeSeconds": 3000},
    {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]},
]


async def fetch(method: str, url: str, headers: dict[str, str] | None = None,
                data: bytes | None = None) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """One unsigned request as a browser sends it: (status, headers, body)."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.request(method, URL(url, encoded=True), headers=headers or {},
                                   data=data) as resp:
            return resp.status, resp.headers, await resp.read()


def signed_put(gateway: GatewayProcess, path: str, body: bytes) -> requests.Response:
    """A SigV4-signed PUT with a body boto3 would refuse to send (malformed documents)."""
    url = f"{gateway.endpoint}{path}"
    req = AWSRequest(method="PUT", url=url, data=body,
                     headers={"x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(req)
    return requests.put(url, data=body, headers=dict(req.headers), timeout=30)


def error_code(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


@pytest.fixture
def presign(gateway: GatewayProcess) -> Any:
    """A SigV4 presigner: the URL signs only the host, so a browser may add headers."""
    client = gateway.client(signature_version="s3v4")

    def url(method: str, bucket: str, key: str) -> str:
        return client.generate_presigned_url(method, Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=300)
    return url


@pytest.fixture
def cors_bucket(s3: Any, bucket: str) -> Iterator[str]:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": RULES})
    yield bucket


# -- the rules, without a server -------------------------------------------------------------

def test_wildcard_matching() -> None:
    assert wildcard_match("*", "")
    assert wildcard_match("https://*.example.org", "https://cdn.example.org")
    assert not wildcard_match("https://*.example.org", "https://example.org")
    assert wildcard_match("start*end", "startend")
    assert not wildcard_match("ab*ba", "aba")  # prefix and suffix may not overlap
    assert not wildcard_match("http://a.com", "http://a.com:80")  # exact without a wildcard


def test_first_matching_rule_wins_and_headers_are_checked() -> None:
    rules = [CorsRule(("https://a.com",), ("GET",), ("x-amz-*",), max_age=5),
             CorsRule(("*",), ("GET", "PUT"))]
    assert find_rule(rules, "https://a.com", "GET") is rules[0]
    assert find_rule(rules, "https://a.com", "GET", ["X-Amz-Date"]) is rules[0]
    # A requested header the first rule does not allow: the next rule decides (none allowed).
    assert find_rule(rules, "https://a.com", "GET", ["content-type"]) is None
    assert find_rule(rules, "https://b.com", "PUT") is rules[1]
    assert find_rule(rules, "https://b.com", "DELETE") is None
    star = rules[1].response_headers("https://b.com", None)
    assert star["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in star
    exact = rules[0].response_headers("https://a.com", ["X-Amz-Date", "x-amz-meta-a"])
    assert exact["Access-Control-Allow-Origin"] == "https://a.com"
    assert exact["Access-Control-Allow-Credentials"] == "true"
    assert exact["Access-Control-Allow-Headers"] == "X-Amz-Date, x-amz-meta-a"
    assert exact["Access-Control-Max-Age"] == "5"


def _doc(rules: str) -> bytes:
    return f"<CORSConfiguration>{rules}</CORSConfiguration>".encode()


_GET_ANY = "<AllowedOrigin>*</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"


@pytest.mark.parametrize(("body", "code", "message"), [
    (b"<CORSConfiguration/>", "MalformedXML", None),
    (b"<NotCors><CORSRule/></NotCors>", "MalformedXML", None),
    (b"not xml", "MalformedXML", None),
    (_doc("<CORSRule><AllowedMethod>GET</AllowedMethod></CORSRule>"), "MalformedXML", None),
    (_doc("<CORSRule><AllowedOrigin>*</AllowedOrigin></CORSRule>"), "MalformedXML", None),
    (_doc(f"<CORSRule>{_GET_ANY}<Bogus>1</Bogus></CORSRule>"), "MalformedXML", None),
    (_doc(f"<CORSRule>{_GET_ANY}<MaxAgeSeconds>soon</MaxAgeSeconds></CORSRule>"),
     "MalformedXML", None),
    (_doc(f"<CORSRule>{_GET_ANY}<MaxAgeSeconds>-1</MaxAgeSeconds></CORSRule>"),
     "MalformedXML", None),
    (_doc("<CORSRule><AllowedOrigin>*</AllowedOrigin><AllowedMethod>PATCH</AllowedMethod>"
          "</CORSRule>"), "InvalidRequest",
     "Found unsupported HTTP method in CORS config. Unsupported method is PATCH"),
    (_doc("<CORSRule><AllowedOrigin>*</AllowedOrigin><AllowedMethod>get</AllowedMethod>"
          "</CORSRule>"), "InvalidRequest",
     "Found unsupported HTTP method in CORS config. Unsupported method is get"),
    (_doc("<CORSRule><AllowedOrigin>http://*.*.a.com</AllowedOrigin>"
          "<AllowedMethod>GET</AllowedMethod></CORSRule>"), "InvalidRequest",
     'AllowedOrigin "http://*.*.a.com" can not have more than one wildcard.'),
    (_doc(f"<CORSRule>{_GET_ANY}<AllowedHeader>x-*-*</AllowedHeader></CORSRule>"),
     "InvalidRequest", 'AllowedHeader "x-*-*" can not have more than one wildcard.'),
    (_doc(f"<CORSRule>{_GET_ANY}<ExposeHeader>x-amz-*</ExposeHeader></CORSRule>"),
     "InvalidRequest", 'ExposeHeader "x-amz-*" contains wildcard. We currently do not '
     "support wildcard for ExposeHeader."),
    (_doc(f"<CORSRule>{_GET_ANY}</CORSRule>" * 101), "InvalidRequest",
     "The number of CORS rules should not exceed allowed limit of 100 rules."),
    (_doc(f"<CORSRule>{_GET_ANY}<ID>{'x' * 70_000}</ID></CORSRule>"), "MalformedXML", None),
    # Nested deeper than Python's recursion limit, within the 64 KB: an S3 error, not a 500.
    (_doc(f"<CORSRule>{_GET_ANY}{'<a>' * 5000}{'</a>' * 5000}</CORSRule>"),
     "MalformedXML", None),
])
def test_invalid_configurations(body: bytes, code: str, message: str | None) -> None:
    with pytest.raises(S3Error) as info:
        parse_configuration(body)
    assert info.value.code == code
    if message is not None:
        assert info.value.message == message


def test_valid_configuration_keeps_everything() -> None:
    rules = parse_configuration(
        b'<CORSConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">\n'
        b"  <CORSRule>\n    <ID>r1</ID>\n    <AllowedOrigin>https://a.com</AllowedOrigin>\n"
        b"    <AllowedOrigin>https://*.b.com</AllowedOrigin>\n"
        b"    <AllowedMethod>GET</AllowedMethod><AllowedMethod>HEAD</AllowedMethod>\n"
        b"    <AllowedHeader>*</AllowedHeader><ExposeHeader>ETag</ExposeHeader>\n"
        b"    <MaxAgeSeconds>600</MaxAgeSeconds>\n  </CORSRule>\n"
        + f"<CORSRule>{_GET_ANY}</CORSRule>".encode() * 99 + b"</CORSConfiguration>")
    assert len(rules) == 100
    assert rules[0] == CorsRule(("https://a.com", "https://*.b.com"), ("GET", "HEAD"), ("*",),
                                ("ETag",), 600, "r1")


class _Store:
    """Just the record read of the object store, counted, with a gate to hold reads open."""

    meta_bucket = None

    def __init__(self) -> None:
        self.record: Any = {"rules": [CorsRule(("*",), ("GET",)).to_record()]}
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def get_bucket_config(self, bucket: str, name: str) -> Any:
        assert name == "cors"
        self.reads += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if bucket == "gone":
            raise S3Error("NoSuchBucket")
        return self.record


class _Gateway:
    """What the record cache reads of a Gateway: the store and `[cache] revalidate_after`."""

    def __init__(self, ttl: float) -> None:
        self.store = _Store()
        self.config = SimpleNamespace(cache=SimpleNamespace(revalidate_after=ttl))


def _fake_gateway(ttl: float) -> Any:
    return _Gateway(ttl)


async def test_record_cache_ttl_sharing_and_local_writes() -> None:
    gw = _fake_gateway(ttl=0.2)
    first = await cors.bucket_rules(gw, "b")
    assert isinstance(first, list) and first[0].allowed_methods == ("GET",)
    await asyncio.gather(*(cors.bucket_rules(gw, "b") for _ in range(20)))
    assert gw.store.reads == 1  # within the TTL: no backend read
    assert await cors.bucket_rules(gw, "gone") is cors.NO_SUCH_BUCKET
    assert await cors.bucket_rules(gw, "gone") is cors.NO_SUCH_BUCKET
    assert gw.store.reads == 2
    # A change made elsewhere is seen once the TTL has passed.
    gw.store.record = None
    await asyncio.sleep(0.25)
    assert await cors.bucket_rules(gw, "b") is None
    assert gw.store.reads == 3
    # Concurrent misses share one read.
    cors.forget(gw, "b")
    gw.store.gate.clear()
    waiting = [asyncio.ensure_future(cors.bucket_rules(gw, "b")) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert gw.store.reads == 4
    # A local write while that read is open: a caller after it does not join the old read,
    # and the old read's answer is not cached.
    gw.store.record = {"rules": [CorsRule(("https://a.com",), ("PUT",)).to_record()]}
    cors.forget(gw, "b")
    after = asyncio.ensure_future(cors.bucket_rules(gw, "b"))
    await asyncio.sleep(0.01)
    assert gw.store.reads == 5
    gw.store.gate.set()
    await asyncio.gather(*waiting)
    fresh = await after
    assert isinstance(fresh, list) and fresh[0].allowed_methods == ("PUT",)
    cached = await cors.bucket_rules(gw, "b")
    assert isinstance(cached, list) and cached[0].allowed_methods == ("PUT",)
    assert gw.store.reads == 5


async def test_unreadable_record_never_fails_the_answer() -> None:
    gw = _fake_gateway(ttl=0)
    gw.store.fail = RuntimeError("backend down")
    request = SimpleNamespace(headers={"Origin": "https://a.com"}, method="GET")
    headers: CIMultiDict[str] = CIMultiDict()
    await cors.add_response_headers(gw, request, "b", headers)  # type: ignore[arg-type]
    assert not headers
    gw.store.fail = None
    await cors.add_response_headers(gw, request, "b", headers)  # type: ignore[arg-type]
    assert headers["Access-Control-Allow-Origin"] == "*"


# -- configuration through boto3, on both backends ------------------------------------------

def test_put_get_delete_round_trip(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as info:
        s3.get_bucket_cors(Bucket=bucket)
    assert error_code(info.value) == (404, "NoSuchCORSConfiguration")
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": RULES})
    got = s3.get_bucket_cors(Bucket=bucket)["CORSRules"]
    assert got == RULES
    # Replacing is whole: the new document is all there is.
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": RULES[2:]})
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == RULES[2:]
    s3.delete_bucket_cors(Bucket=bucket)
    with pytest.raises(ClientError) as info:
        s3.get_bucket_cors(Bucket=bucket)
    assert error_code(info.value) == (404, "NoSuchCORSConfiguration")
    s3.delete_bucket_cors(Bucket=bucket)  # idempotent


def test_configuration_on_a_missing_bucket(s3: Any) -> None:
    name = f"missing-{uuid.uuid4().hex[:12]}"
    for call in (lambda: s3.get_bucket_cors(Bucket=name),
                 lambda: s3.delete_bucket_cors(Bucket=name),
                 lambda: s3.put_bucket_cors(Bucket=name,
                                            CORSConfiguration={"CORSRules": RULES})):
        with pytest.raises(ClientError) as info:
            call()
        assert error_code(info.value) == (404, "NoSuchBucket")


def test_invalid_configuration_through_boto3_keeps_the_old_one(s3: Any, cors_bucket: str
                                                                ) -> None:
    bad = [{"AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}]
    with pytest.raises(ClientError) as info:
        s3.put_bucket_cors(Bucket=cors_bucket, CORSConfiguration={"CORSRules": bad})
    assert error_code(info.value) == (400, "InvalidRequest")
    too_many = [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}] * 101
    with pytest.raises(ClientError) as info:
        s3.put_bucket_cors(Bucket=cors_bucket, CORSConfiguration={"CORSRules": too_many})
    assert error_code(info.value) == (400, "InvalidRequest")
    assert s3.get_bucket_cors(Bucket=cors_bucket)["CORSRules"] == RULES


def test_malformed_document_is_refused_with_an_xml_error(gateway: GatewayProcess, s3: Any,
                                                        bucket: str) -> None:
    resp = signed_put(gateway, f"/{bucket}?cors",
                      _doc("<CORSRule><AllowedMethod>GET</AllowedMethod></CORSRule>"))
    assert resp.status_code == 400
    assert b"<Code>MalformedXML</Code>" in resp.content
    assert b"<RequestId>" in resp.content
    assert signed_put(gateway, f"/{bucket}?cors", _doc(f"<CORSRule>{_GET_ANY}</CORSRule>")
                      ).status_code == 200
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == [
        {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}]


def test_recreated_bucket_starts_without_cors(gateway: GatewayProcess, s3: Any) -> None:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": RULES})
    s3.delete_bucket(Bucket=name)
    s3.create_bucket(Bucket=name)
    try:
        with pytest.raises(ClientError) as info:
            s3.get_bucket_cors(Bucket=name)
        assert error_code(info.value) == (404, "NoSuchCORSConfiguration")
    finally:
        s3.delete_bucket(Bucket=name)


# -- the browser's side: preflights ---------------------------------------------------------

async def test_preflight_answers_as_s3(gateway: GatewayProcess, cors_bucket: str) -> None:
    url = f"{gateway.endpoint}/{cors_bucket}/no/such/key.png"  # the object is never read
    status, headers, body = await fetch("OPTIONS", url, {
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "Content-Type, X-Amz-Date,x-amz-meta-prompt"})
    assert status == 200 and body == b""
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert headers["Access-Control-Allow-Methods"] == "PUT, POST, DELETE"
    assert headers["Access-Control-Allow-Headers"] == "Content-Type, X-Amz-Date, x-amz-meta-prompt"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Vary"] == VARY
    assert "Access-Control-Max-Age" not in headers
    assert "Access-Control-Expose-Headers" not in headers

    # Second rule: wildcard origin, header patterns, exposed headers, max age.
    status, headers, _ = await fetch("OPTIONS", url, {
        "Origin": "https://cdn.example.org", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "range,x-amz-checksum-mode"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://cdn.example.org"
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD"
    assert headers["Access-Control-Allow-Headers"] == "range, x-amz-checksum-mode"
    assert headers["Access-Control-Expose-Headers"] == "ETag, x-amz-request-id"
    assert headers["Access-Control-Max-Age"] == "3000"

    # A header the second rule does not allow: the third (any origin, GET, no headers)
    # does not allow it either.
    status, headers, body = await fetch("OPTIONS", url, {
        "Origin": "https://cdn.example.org", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 403
    assert b"<Code>AccessForbidden</Code>" in body and NOT_ALLOWED.encode() in body
    assert b"<Method>GET</Method><ResourceType>OBJECT</ResourceType>" in body
    assert "Access-Control-Allow-Origin" not in headers

    # Any other origin may GET (rule 3: "*"), on the bucket too; nothing else.
    status, headers, _ = await fetch("OPTIONS", f"{gateway.endpoint}/{cors_bucket}", {
        "Origin": "https://elsewhere.net", "Access-Control-Request-Method": "GET"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers
    status, _, body = await fetch("OPTIONS", url, {
        "Origin": "https://elsewhere.net", "Access-Control-Request-Method": "DELETE"})
    assert status == 403 and NOT_ALLOWED.encode() in body


async def test_preflight_refusals(gateway: GatewayProcess, s3: Any, bucket: str) -> None:
    url = f"{gateway.endpoint}/{bucket}/key"
    status, _, body = await fetch("OPTIONS", url)
    assert status == 400 and b"<Code>BadRequest</Code>" in body
    assert b"Origin request header needed." in body and b"<RequestId>" in body
    status, _, body = await fetch("OPTIONS", url, {"Access-Control-Request-Method": "GET"})
    assert status == 400 and b"Origin request header needed." in body
    status, _, body = await fetch("OPTIONS", url, {"Origin": "https://a.com"})
    assert status == 400 and b"Invalid Access-Control-Request-Method: null" in body
    status, _, body = await fetch("OPTIONS", url, {"Origin": "https://a.com",
                                                   "Access-Control-Request-Method": "BLAH"})
    assert status == 400 and b"Invalid Access-Control-Request-Method: BLAH" in body
    ok = {"Origin": "https://a.com", "Access-Control-Request-Method": "GET"}
    status, _, body = await fetch("OPTIONS", url, ok)
    assert status == 403 and b"CORS is not enabled for this bucket." in body
    missing = f"{gateway.endpoint}/missing-{uuid.uuid4().hex[:12]}/key"
    status, _, body = await fetch("OPTIONS", missing, ok)
    assert status == 403 and b"CORSResponse: Bucket not found" in body
    status, _, body = await fetch("OPTIONS", f"{gateway.endpoint}/", ok)
    assert status == 403 and b"CORSResponse: Bucket not found" in body

    # Set, then removed: the gateway that removed it answers at once (no stale cache).
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": RULES[2:]})
    assert (await fetch("OPTIONS", url, ok))[0] == 200
    s3.delete_bucket_cors(Bucket=bucket)
    assert (await fetch("OPTIONS", url, ok))[0] == 403


async def test_preflight_of_a_presigned_url(gateway: GatewayProcess, s3: Any, presign: Any,
                                            cors_bucket: str) -> None:
    """The browser preflights the URL it will PUT to, query string and all."""
    url = presign("put_object", cors_bucket, "up")
    status, headers, _ = await fetch("OPTIONS", url, {
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    status, headers, body = await fetch("PUT", url, {"Origin": "https://app.example.com"},
                                     data=b"from a page")
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert headers["Access-Control-Allow-Methods"] == "PUT, POST, DELETE"
    assert s3.get_object(Bucket=cors_bucket, Key="up")["Body"].read() == b"from a page"


# -- the browser's side: actual requests ----------------------------------------------------

async def test_actual_requests_carry_the_matching_rule(gateway: GatewayProcess, s3: Any,
                                                       presign: Any, cors_bucket: str) -> None:
    s3.put_object(Bucket=cors_bucket, Key="plain.txt", Body=b"hello")
    url = presign("get_object", cors_bucket, "plain.txt")
    status, headers, body = await fetch("GET", url, {"Origin": "https://cdn.example.org"})
    assert status == 200 and body == b"hello"
    assert headers["Access-Control-Allow-Origin"] == "https://cdn.example.org"
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD"
    assert headers["Access-Control-Expose-Headers"] == "ETag, x-amz-request-id"
    assert headers["Access-Control-Max-Age"] == "3000"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Vary"] == VARY
    assert "Access-Control-Allow-Headers" not in headers

    status, headers, _ = await fetch("GET", url, {"Origin": "https://elsewhere.net"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    status, headers, body = await fetch("GET", url)  # no Origin: not a CORS request
    assert status == 200 and body == b"hello"
    assert not any(h.lower().startswith("access-control-") for h in headers)
    assert "Vary" not in headers

    # HEAD is allowed to *.example.org by rule 2, not to others (rule 3 is GET only).
    head = presign("head_object", cors_bucket, "plain.txt")
    status, headers, _ = await fetch("HEAD", head, {"Origin": "https://x.example.org"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://x.example.org"
    status, headers, _ = await fetch("HEAD", head, {"Origin": "https://elsewhere.net"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


async def test_error_answers_carry_cors_headers(gateway: GatewayProcess, s3: Any, presign: Any,
                                                cors_bucket: str) -> None:
    """A page must be able to read the error S3 sent (404, 403), as on S3."""
    url = presign("get_object", cors_bucket, "absent")
    status, headers, body = await fetch("GET", url, {"Origin": "https://a.example.org"})
    assert status == 404 and b"<Code>NoSuchKey</Code>" in body
    assert headers["Access-Control-Allow-Origin"] == "https://a.example.org"
    # Unsigned: refused before any handler runs, still decorated.
    status, headers, body = await fetch("GET", f"{gateway.endpoint}/{cors_bucket}/absent",
                                        {"Origin": "https://elsewhere.net"})
    assert status == 403
    assert headers["Access-Control-Allow-Origin"] == "*"
    # A bucket without CORS: nothing.
    other = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=other)
    try:
        url = presign("get_object", other, "absent")
        status, headers, _ = await fetch("GET", url, {"Origin": "https://elsewhere.net"})
        assert status == 404 and "Access-Control-Allow-Origin" not in headers
    finally:
        s3.delete_bucket(Bucket=other)


async def test_a_page_reads_a_latent_image(latent_gateway: GatewayProcess,  # noqa: F811
                                           tiny_model: dict[str, str]) -> None:  # noqa: F811
    """The issue's browser check: preflight, then GET with Origin of a converted image."""
    s3 = latent_gateway.client()
    presigner = latent_gateway.client(signature_version="s3v4")
    name = f"l-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": [
        {"AllowedOrigins": ["https://gallery.example.com"], "AllowedMethods": ["GET", "HEAD"],
         "AllowedHeaders": ["Range"], "ExposeHeaders": ["ETag", "Content-Length"],
         "MaxAgeSeconds": 600}]})
    image, sidecar, _ = make_pair(tiny_model, seed=3)
    s3.put_object(Bucket=name, Key="art/cat.png", Body=image, ContentType="image/png")
    s3.put_object(Bucket=name, Key="art/cat.png.latent.safetensors", Body=sidecar)
    wait_latent(s3, name, "art/cat.png")
    signed = s3.get_object(Bucket=name, Key="art/cat.png")
    expected = signed["Body"].read()

    page = {"Origin": "https://gallery.example.com"}
    url = presigner.generate_presigned_url("get_object", ExpiresIn=300,
                                           Params={"Bucket": name, "Key": "art/cat.png"})
    status, headers, _ = await fetch("OPTIONS", url, {
        **page, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://gallery.example.com"
    assert headers["Access-Control-Allow-Headers"] == "range"
    assert headers["Access-Control-Max-Age"] == "600"
    status, headers, body = await fetch("GET", url, page)
    assert status == 200 and body == expected  # rendered exactly as for a signed read
    assert headers["ETag"] == signed["ETag"]
    assert headers["Access-Control-Allow-Origin"] == "https://gallery.example.com"
    assert headers["Access-Control-Expose-Headers"] == "ETag, Content-Length"
    assert headers["Vary"] == VARY
    status, headers, body = await fetch("GET", url, {**page, "Range": "bytes=0-99"})
    assert status == 206 and body == expected[:100]
    assert headers["Access-Control-Allow-Origin"] == "https://gallery.example.com"
    # Another site's page gets the image bytes (the URL is signed) but no permission to read
    # them from script: the browser blocks it.
    status, headers, _ = await fetch("GET", url, {"Origin": "https://evil.example.net"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


@pytest.mark.seaweedfs
async def test_another_gateway_sees_a_change_within_revalidate_after(
        seaweedfs: Any, tmp_path: Path) -> None:
    """Two gateways on one S3 backend (a fleet): a rule set through one is in force on the
    other once its cached record is older than `[cache] revalidate_after`."""
    procs = [GatewayProcess(seaweedfs.endpoint, tmp_path / f"g{i}",
                            backend_keys=(seaweedfs.access_key, seaweedfs.secret_key),
                            config="[cache]\nrevalidate_after = 0.5\n") for i in range(2)]
    writer, reader = (p.start() for p in procs)
    try:
        s3 = writer.client()
        name = f"t-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=name)
        ask = {"Origin": "https://a.com", "Access-Control-Request-Method": "GET"}
        url = f"{reader.endpoint}/{name}/k"
        assert (await fetch("OPTIONS", url, ask))[0] == 403  # cached there: not enabled
        s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": RULES[2:]})
        assert (await fetch("OPTIONS", f"{writer.endpoint}/{name}/k", ask))[0] == 200
        await asyncio.sleep(0.6)
        assert (await fetch("OPTIONS", url, ask))[0] == 200
        s3.delete_bucket_cors(Bucket=name)
        s3.delete_bucket(Bucket=name)
    finally:
        for proc in procs:
            proc.stop()


async def test_a_bad_configuration_for_a_missing_bucket_is_no_such_bucket(
        tmp_path: Path) -> None:
    # As on S3, the bucket is looked up before the document is judged.
    async with serve_gateway(tmp_path) as gw:
        await gw.run(lambda s3: s3.create_bucket(Bucket="here"))
        for body in (b"<nope/>", _doc("<CORSRule><AllowedMethod>PATCH</AllowedMethod>"
                                      "<AllowedOrigin>*</AllowedOrigin></CORSRule>")):
            reply = await gw.call("PUT", "/not-here", query="cors", body=body)
            assert reply.status == 404 and reply.error_code() == "NoSuchBucket", reply
            reply = await gw.call("PUT", "/here", query="cors", body=body)
            assert reply.status == 400, reply
