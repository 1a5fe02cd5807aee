"""SigV4 verification against requests signed by botocore and by the test client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from s3latent.errors import S3Error
from s3latent.s3api.auth import (
    AuthContext,
    authenticate,
    canonical_queries,
    canonical_uris,
)
from s3latent.sigv4 import signing_key
from tests import sigv4_client as client
from tests.sigv4_client import ACCESS_KEY, HOST, REGION, SECRET_KEY, USERS

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CREDS = Credentials(ACCESS_KEY, SECRET_KEY)

KEYS = [
    "plain.txt",
    "with space.png",
    "ünïcödé/日本語.jpg",
    "a+b+c",
    "eq=sign&amp",
    "100%25 literally%",
    "~tilde~",
    "sub!*'()@$,;:[]",
    "dir//double/slash/",
    "tab\there",
]


def _botocore_signed(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    when: datetime = NOW,
) -> tuple[str, str, CIMultiDict[str]]:
    """(path, query, headers) of a request botocore's S3SigV4Auth signed at `when`."""
    request = AWSRequest(method=method, url=url, headers=headers or {}, data=body)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        S3SigV4Auth(CREDS, "s3", REGION).add_auth(request)
    parts = urlsplit(url)
    wire = CIMultiDict([("Host", parts.netloc)])
    wire.extend(request.headers.items())
    return parts.path, parts.query, wire


def _botocore_presigned(
    method: str, url: str, *, expires: int = 3600, when: datetime = NOW
) -> tuple[str, str, CIMultiDict[str]]:
    request = AWSRequest(method=method, url=url)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        S3SigV4QueryAuth(CREDS, "s3", REGION, expires=expires).add_auth(request)
    parts = urlsplit(request.url)
    return parts.path, parts.query, CIMultiDict([("Host", parts.netloc)])


def _auth(req: client.RawRequest, **kwargs: object) -> AuthContext:
    return authenticate(req.method, req.path, req.query, req.header_map(), USERS, **kwargs)  # type: ignore[arg-type]


def _error(fn: object, *args: object, **kwargs: object) -> S3Error:
    with pytest.raises(S3Error) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value


# -- the test client agrees with botocore ----------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_client_signature_matches_botocore(key: str) -> None:
    body = b"hello world"
    path = client.key_path("bucket", key)
    url = f"http://{HOST}{path}?tagging=&x-id=PutObject"
    headers = {"Content-Length": str(len(body)), "x-amz-meta-note": "  a   b  "}
    _, _, boto_headers = _botocore_signed("PUT", url, headers=headers, body=body)
    ours = client.sign(
        "PUT",
        path,
        query=[("tagging", ""), ("x-id", "PutObject")],
        headers={"x-amz-meta-note": "  a   b  "},
        body=body,
        now=NOW,
    )
    assert ours.header_map()["Authorization"] == boto_headers["Authorization"]


def test_client_presign_matches_botocore() -> None:
    path = client.key_path("bucket", "a b+c/ü.png")
    url = f"http://{HOST}{path}?response-content-type=image%2Fpng"
    _, boto_query, _ = _botocore_presigned("GET", url, expires=900)
    ours = client.presign(
        "GET", path, query={"response-content-type": "image/png"}, expires=900, now=NOW
    )
    assert ours.query == boto_query


# -- requests botocore signs --------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_botocore_header_auth_special_keys(key: str, method: str) -> None:
    body = b"payload" if method == "PUT" else b""
    url = f"http://{HOST}/bucket/{quote(key, safe='/~')}"
    path, query, headers = _botocore_signed(method, url, body=body)
    ctx = authenticate(method, path, query, headers, USERS, now=NOW)
    assert ctx.access_key == ACCESS_KEY
    assert ctx.presigned is False
    assert ctx.amz_date == "20240501T120000Z"
    assert ctx.credential_scope == f"20240501/{REGION}/s3/aws4_request"
    assert ctx.seed_signature == headers["Authorization"].rsplit("Signature=", 1)[1]
    assert ctx.signing_key == client.derive_key(SECRET_KEY, "20240501")
    assert ctx.content_sha256 == headers["x-amz-content-sha256"]


@pytest.mark.parametrize(
    "query",
    [
        "list-type=2&prefix=a%20b%2Bc%2F&delimiter=%2F&encoding-type=url",
        "uploads",
        "uploadId=2~abc.def_-XYZ&partNumber=3",
        "delete",
        "versioning=&x-id=GetBucketVersioning",
        "prefix=%E6%97%A5%E6%9C%AC&max-keys=5",
    ],
)
def test_botocore_query_strings(query: str) -> None:
    path, raw_query, headers = _botocore_signed("GET", f"http://{HOST}/bucket?{query}")
    assert raw_query == query
    assert authenticate("GET", path, raw_query, headers, USERS, now=NOW).access_key


def test_botocore_date_header_instead_of_x_amz_date() -> None:
    path, query, headers = _botocore_signed(
        "GET", f"http://{HOST}/bucket/k", headers={"Date": "placeholder"}
    )
    assert "X-Amz-Date" not in headers
    ctx = authenticate("GET", path, query, headers, USERS, now=NOW + timedelta(minutes=3))
    assert ctx.amz_date == "20240501T120000Z"


@pytest.mark.parametrize("key", KEYS)
def test_botocore_presigned_url(key: str) -> None:
    url = f"http://{HOST}/bucket/{quote(key, safe='/~')}?versionId=null"
    path, query, headers = _botocore_presigned("GET", url, expires=600)
    ctx = authenticate("GET", path, query, headers, USERS, now=NOW + timedelta(seconds=599))
    assert ctx.presigned is True
    assert ctx.content_sha256 == "UNSIGNED-PAYLOAD"
    err = _error(authenticate, "GET", path, query, headers, USERS, now=NOW + timedelta(seconds=601))
    assert (err.code, err.message, err.status) == ("AccessDenied", "Request has expired", 403)


def _boto3_client(**config: object) -> object:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=f"http://{HOST}",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(**config),
    )


def test_boto3_default_presign_is_sigv2_and_refused() -> None:
    # boto3 presigns with SigV2 against a custom endpoint unless told s3v4.
    url = _boto3_client().generate_presigned_url(  # type: ignore[attr-defined]
        "get_object", Params={"Bucket": "bucket", "Key": "k"}
    )
    parts = urlsplit(url)
    assert "AWSAccessKeyId=" in parts.query
    headers = CIMultiDict([("Host", parts.netloc)])
    err = _error(authenticate, "GET", parts.path, parts.query, headers, USERS)
    assert err.code == "InvalidRequest"


def test_boto3_generate_presigned_url() -> None:
    s3: Any = _boto3_client(signature_version="s3v4")
    for key in KEYS:
        for method, op in (("GET", "get_object"), ("PUT", "put_object")):
            url = s3.generate_presigned_url(
                op, Params={"Bucket": "bucket", "Key": key}, ExpiresIn=120
            )
            parts = urlsplit(url)
            headers = CIMultiDict([("Host", parts.netloc)])
            assert authenticate(method, parts.path, parts.query, headers, USERS).presigned
            other = "PUT" if method == "GET" else "GET"
            err = _error(authenticate, other, parts.path, parts.query, headers, USERS)
            assert err.code == "SignatureDoesNotMatch"


# -- canonical forms --------------------------------------------------------------------


def test_canonical_uri_candidates() -> None:
    assert canonical_uris("/b/a%20b") == ["/b/a%20b"]
    assert canonical_uris("/b/a+b") == ["/b/a+b", "/b/a%2Bb"]
    assert canonical_uris("/b/%7Ex") == ["/b/%7Ex", "/b/~x"]
    assert canonical_uris("") == ["/"]


def test_canonical_query_candidates() -> None:
    pairs = [("b", "2"), ("a", "x%2fy"), ("uploads", "")]
    assert canonical_queries(pairs)[0] == "a=x%2Fy&b=2&uploads="
    assert canonical_queries([("p", "a+b")]) == ["p=a%2Bb", "p=a%20b", "p=a+b"]
    # repeated keys sort by value
    assert canonical_queries([("k", "b"), ("k", "a")])[0] == "k=a&k=b"


@pytest.mark.parametrize(
    ("signed_uri", "sent_path"),
    [
        ("/bucket/a%2Bb", "/bucket/a+b"),  # client encodes '+' when signing, sends it raw
        ("/bucket/a+b", "/bucket/a+b"),  # signs and sends the raw '+'
        ("/bucket/~x", "/bucket/%7Ex"),  # old quote() that escaped '~'
        ("/bucket/%7Ex", "/bucket/%7Ex"),
        ("/bucket/a%20b", "/bucket/a%20b"),
    ],
)
def test_path_spellings(signed_uri: str, sent_path: str) -> None:
    req = client.sign("GET", sent_path, canonical_uri=signed_uri, now=NOW)
    assert _auth(req, now=NOW).access_key == ACCESS_KEY


def test_plus_in_query_read_as_space() -> None:
    req = client.sign("GET", "/bucket", query="prefix=a%20b", now=NOW)
    req.query = "prefix=a+b"
    assert _auth(req, now=NOW)


def test_signature_binds_path_and_query() -> None:
    req = client.sign("GET", "/bucket/key1", query={"x": "1"}, now=NOW)
    req.path = "/bucket/key2"
    assert _error(_auth, req, now=NOW).code == "SignatureDoesNotMatch"
    req = client.sign("GET", "/bucket/key1", query={"x": "1"}, now=NOW)
    req.query = "x=2"
    assert _error(_auth, req, now=NOW).code == "SignatureDoesNotMatch"
    req = client.sign("GET", "/bucket/a%2Fb", now=NOW)
    req.path = "/bucket/a/b"  # same decoded string would be a different S3 key
    assert _error(_auth, req, now=NOW).code == "SignatureDoesNotMatch"


def test_multi_valued_headers_and_whitespace() -> None:
    headers = [
        ("x-amz-meta-list", "  one   two  "),
        ("X-Amz-Meta-List", "three"),
        ("Content-Type", "text/plain;   charset=utf-8"),
    ]
    req = client.sign("PUT", "/bucket/k", headers=headers, body=b"x", now=NOW)
    assert "x-amz-meta-list:one two,three\n" in req.canonical
    assert _auth(req, now=NOW)
    # order of repeated values is significant
    i, j = [n for n, (name, _) in enumerate(req.headers) if name.lower() == "x-amz-meta-list"]
    req.headers[i], req.headers[j] = req.headers[j], req.headers[i]
    assert _error(_auth, req, now=NOW).code == "SignatureDoesNotMatch"


def test_context_for_streaming_modes() -> None:
    for mode, value in client.MODES.items():
        req = client.sign("PUT", "/bucket/k", body=b"abc", mode=mode, now=NOW)
        ctx = _auth(req, now=NOW)
        assert ctx.content_sha256 == (value or req.header_map()["x-amz-content-sha256"])
        assert ctx.seed_signature == req.signature


def test_signing_key_cached() -> None:
    signing_key.cache_clear()
    req = client.sign("GET", "/bucket/k", now=NOW)
    _auth(req, now=NOW)
    _auth(req, now=NOW)
    info = signing_key.cache_info()
    assert (info.misses, info.hits) == (1, 1)


# -- errors -----------------------------------------------------------------------------


def test_clock_skew() -> None:
    req = client.sign("GET", "/bucket/k", now=NOW)
    assert _auth(req, now=NOW + timedelta(minutes=14))
    assert _auth(req, now=NOW - timedelta(minutes=14))
    for delta in (timedelta(minutes=16), -timedelta(minutes=16)):
        err = _error(_auth, req, now=NOW + delta)
        assert (err.code, err.status) == ("RequestTimeTooSkewed", 403)
        assert err.extra["RequestTime"] == "20240501T120000Z"
        assert err.extra["MaxAllowedSkewMilliseconds"] == "900000"
    assert _auth(req, now=NOW + timedelta(minutes=20), max_skew=timedelta(minutes=30))


def test_unknown_access_key() -> None:
    req = client.sign("GET", "/bucket/k", access_key="NOSUCHKEY", now=NOW)
    err = _error(_auth, req, now=NOW)
    assert (err.code, err.status, err.extra["AWSAccessKeyId"]) == (
        "InvalidAccessKeyId",
        403,
        "NOSUCHKEY",
    )


def test_wrong_secret() -> None:
    req = client.sign("PUT", "/bucket/k", body=b"x", secret="wrong", now=NOW)
    err = _error(_auth, req, now=NOW)
    assert (err.code, err.status) == ("SignatureDoesNotMatch", 403)
    assert err.extra["CanonicalRequest"] == req.canonical  # the client's form, for debugging
    assert err.extra["SignatureProvided"] == req.signature


def test_tampered_signed_header() -> None:
    req = client.sign("PUT", "/bucket/k", headers={"x-amz-meta-a": "1"}, body=b"x", now=NOW)
    req.replace_header("x-amz-meta-a", "2")
    assert _error(_auth, req, now=NOW).code == "SignatureDoesNotMatch"


def test_unsigned_amz_header_refused() -> None:
    req = client.sign(
        "PUT",
        "/bucket/k",
        headers={"x-amz-copy-source": "/other/secret"},
        unsigned_headers=["x-amz-copy-source"],
        now=NOW,
    )
    err = _error(_auth, req, now=NOW)
    assert err.code == "AccessDenied"
    assert err.extra["HeadersNotSigned"] == "x-amz-copy-source"
    # presigned URLs are held to the same rule
    req = client.presign("PUT", "/bucket/k", now=NOW)
    req.headers.append(("x-amz-acl", "public-read"))
    assert _error(_auth, req, now=NOW).code == "AccessDenied"


def test_unsigned_non_amz_header_allowed() -> None:
    req = client.sign("GET", "/bucket/k", now=NOW)
    req.headers.append(("User-Agent", "whatever"))
    assert _auth(req, now=NOW)


def test_anonymous_request_denied() -> None:
    err = _error(authenticate, "GET", "/bucket/k", "", CIMultiDict({"Host": HOST}), USERS)
    assert (err.code, err.status) == ("AccessDenied", 403)


def test_sigv2_refused() -> None:
    headers = CIMultiDict({"Host": HOST, "Authorization": "AWS AKIAIOSFODNN7EXAMPLE:c2lnbmF0dXJl"})
    err = _error(authenticate, "GET", "/bucket/k", "", headers, USERS)
    assert (err.code, err.status) == ("InvalidRequest", 400)
    assert "Please use AWS4-HMAC-SHA256." in err.message
    query = "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1700000000&Signature=abc%3D"
    err = _error(authenticate, "GET", "/bucket/k", query, CIMultiDict({"Host": HOST}), USERS)
    assert err.code == "InvalidRequest"
    assert "Please use AWS4-HMAC-SHA256." in err.message


def test_unsupported_authorization_scheme() -> None:
    headers = CIMultiDict({"Host": HOST, "Authorization": "Bearer abc"})
    assert _error(authenticate, "GET", "/b", "", headers, USERS).code == "InvalidArgument"


def test_header_and_query_auth_together() -> None:
    req = client.sign("GET", "/bucket/k", query={"X-Amz-Algorithm": "AWS4-HMAC-SHA256"}, now=NOW)
    assert _error(_auth, req, now=NOW).code == "InvalidArgument"


def _with_authorization(value: str) -> client.RawRequest:
    req = client.sign("GET", "/bucket/k", now=NOW)
    req.replace_header("Authorization", value)
    return req


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240501/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-date",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240501/us-east-1/s3, "
        "SignedHeaders=host, Signature=" + "a" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/2024-05-01/us-east-1/s3/aws4_request, "
        "SignedHeaders=host, Signature=" + "a" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240501/us-east-1/ec2/aws4_request, "
        "SignedHeaders=host, Signature=" + "a" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240501/us-east-1/s3/aws5_request, "
        "SignedHeaders=host, Signature=" + "a" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240502/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "a" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240501/us-east-1/s3/aws4_request, "
        "SignedHeaders=x-amz-content-sha256;x-amz-date, Signature=" + "a" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240501/us-east-1/s3/aws4_request, "
        "SignedHeaders=host, Signature=xyz",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240501/us-east-1/s3/aws4_request, "
        "SignedHeaders=Host;X-Amz-Date, Signature=" + "a" * 64,
        "AWS4-HMAC-SHA256 garbage",
    ],
)
def test_malformed_authorization_header(authorization: str) -> None:
    err = _error(_auth, _with_authorization(authorization), now=NOW)
    assert (err.code, err.status) == ("AuthorizationHeaderMalformed", 400)


def test_authorization_without_spaces_after_commas() -> None:
    req = client.sign("GET", "/bucket/k", now=NOW)
    value = req.header_map()["Authorization"].replace(", ", ",")
    req.replace_header("Authorization", value)
    assert _auth(req, now=NOW)


def test_region_enforced_when_configured() -> None:
    req = client.sign("GET", "/bucket/k", region="eu-west-1", now=NOW)
    assert _auth(req, now=NOW).credential_scope == "20240501/eu-west-1/s3/aws4_request"
    assert _auth(req, now=NOW, region="eu-west-1")
    err = _error(_auth, req, now=NOW, region="us-east-1")
    assert err.code == "AuthorizationHeaderMalformed"
    assert err.extra["Region"] == "us-east-1"


def test_bad_or_missing_date() -> None:
    req = client.sign("GET", "/bucket/k", now=NOW)
    req.replace_header("X-Amz-Date", "2024-05-01T12:00:00Z")
    assert _error(_auth, req, now=NOW).code == "AccessDenied"
    req.replace_header("X-Amz-Date", None)
    err = _error(_auth, req, now=NOW)
    assert (err.code, err.status) == ("AccessDenied", 403)
    assert "Date" in err.message


def test_content_sha256_header_checks() -> None:
    req = client.sign("GET", "/bucket/k", now=NOW)
    req.replace_header("x-amz-content-sha256", None)
    assert _error(_auth, req, now=NOW).code == "InvalidRequest"
    req = client.sign("GET", "/bucket/k", now=NOW)
    req.replace_header("x-amz-content-sha256", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD")
    assert _error(_auth, req, now=NOW).code == "InvalidArgument"


# -- presigned errors ------------------------------------------------------------------


def _presigned_query_without(name: str) -> str:
    req = client.presign("GET", "/bucket/k", now=NOW)
    return "&".join(p for p in req.query.split("&") if not p.startswith(name + "="))


@pytest.mark.parametrize(
    "name",
    [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ],
)
def test_presigned_missing_parameter(name: str) -> None:
    query = _presigned_query_without(name)
    headers = CIMultiDict({"Host": HOST})
    err = _error(authenticate, "GET", "/bucket/k", query, headers, USERS, now=NOW)
    assert (err.code, err.status) == ("AuthorizationQueryParametersError", 400)


@pytest.mark.parametrize("expires", ["604801", "-5", "abc", "1e3"])
def test_presigned_expires_out_of_range(expires: str) -> None:
    req = client.presign("GET", "/bucket/k", expires=expires, now=NOW)
    assert _error(_auth, req, now=NOW).code == "AuthorizationQueryParametersError"


def test_presigned_zero_expiry_has_expired() -> None:
    """X-Amz-Expires=0 is valid for no time at all: 403 Request has expired (AWS), not 400."""
    req = client.presign("GET", "/bucket/k", expires="0", now=NOW)
    err = _error(_auth, req, now=NOW)
    assert (err.code, err.status, err.message) == ("AccessDenied", 403, "Request has expired")
    assert err.extra["X-Amz-Expires"] == "0"


def test_presigned_expiry_boundaries() -> None:
    req = client.presign("GET", "/bucket/k", expires=604800, now=NOW)
    assert _auth(req, now=NOW + timedelta(seconds=604800))
    err = _error(_auth, req, now=NOW + timedelta(seconds=604801))
    assert (err.code, err.message) == ("AccessDenied", "Request has expired")
    assert err.extra["X-Amz-Expires"] == "604800"
    req = client.presign("GET", "/bucket/k", expires=1, now=NOW)
    assert _auth(req, now=NOW + timedelta(seconds=1))
    assert _error(_auth, req, now=NOW + timedelta(seconds=2)).message == "Request has expired"


def test_presigned_from_the_future() -> None:
    req = client.presign("GET", "/bucket/k", now=NOW + timedelta(hours=1))
    assert _error(_auth, req, now=NOW).code == "AccessDenied"
    assert _auth(req, now=NOW + timedelta(minutes=50))


def test_presigned_bad_fields() -> None:
    req = client.presign("GET", "/bucket/k", algorithm="AWS4-HMAC-SHA1", now=NOW)
    assert _error(_auth, req, now=NOW).code == "AuthorizationQueryParametersError"
    req = client.presign("GET", "/bucket/k", credential_date="20240430", now=NOW)
    assert _error(_auth, req, now=NOW).code == "AuthorizationQueryParametersError"
    req = client.presign("GET", "/bucket/k", now=NOW)
    req.query = req.query.replace("X-Amz-Date=20240501T120000Z", "X-Amz-Date=20240501")
    assert _error(_auth, req, now=NOW).code == "AuthorizationQueryParametersError"
    req = client.presign("GET", "/bucket/k", now=NOW)
    req.query = req.query.replace("%2Fs3%2F", "%2Fiam%2F")
    assert _error(_auth, req, now=NOW).code == "AuthorizationQueryParametersError"
    req = client.presign("GET", "/bucket/k", now=NOW)
    req.query += "&X-Amz-Date=20240501T120000Z"
    assert _error(_auth, req, now=NOW).code == "AuthorizationQueryParametersError"


def test_presigned_tampering() -> None:
    req = client.presign("GET", "/bucket/k", query={"response-content-type": "a/b"}, now=NOW)
    assert _auth(req, now=NOW).seed_signature == req.signature
    tampered = client.presign("GET", "/bucket/k", query={"response-content-type": "a/b"}, now=NOW)
    tampered.query = tampered.query.replace("a%2Fb", "text%2Fhtml")
    assert _error(_auth, tampered, now=NOW).code == "SignatureDoesNotMatch"
    added = client.presign("GET", "/bucket/k", now=NOW)
    added.query += "&response-content-disposition=attachment"
    assert _error(_auth, added, now=NOW).code == "SignatureDoesNotMatch"
    wrong = client.presign("GET", "/bucket/k", secret="nope", now=NOW)
    assert _error(_auth, wrong, now=NOW).code == "SignatureDoesNotMatch"
    unknown = client.presign("GET", "/bucket/k", access_key="WHO", now=NOW)
    assert _error(_auth, unknown, now=NOW).code == "InvalidAccessKeyId"


def test_presigned_signed_headers_enforced() -> None:
    req = client.presign("PUT", "/bucket/k", headers={"x-amz-meta-owner": "me"}, now=NOW)
    assert _auth(req, now=NOW)
    req.replace_header("x-amz-meta-owner", "someone else")
    assert _error(_auth, req, now=NOW).code == "SignatureDoesNotMatch"


def test_presigned_content_sha256_header() -> None:
    # an unsigned x-amz-content-sha256 on a presigned request is ignored...
    req = client.presign("PUT", "/bucket/k", now=NOW)
    req.headers.append(("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"))
    assert _auth(req, now=NOW).content_sha256 == "UNSIGNED-PAYLOAD"
    # ...a signed one is honoured, so the payload reader verifies it
    digest = "a" * 64
    req = client.presign("PUT", "/bucket/k", headers={"x-amz-content-sha256": digest}, now=NOW)
    assert _auth(req, now=NOW).content_sha256 == digest


# -- the worked examples of the AWS documentation ("Signature Calculations for the
#    Authorization Header" and "Authenticating Requests: Using Query Parameters") ----------

AWS_NOW = datetime(2013, 5, 24, 0, 0, 10, tzinfo=UTC)
AWS_HOST = "examplebucket.s3.amazonaws.com"
AWS_CRED = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "signed", "signature"),
    [
        (
            "GET",
            "/test.txt",
            "",
            {"Range": "bytes=0-9", "x-amz-content-sha256": EMPTY},
            "host;range;x-amz-content-sha256;x-amz-date",
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        ),
        (
            "PUT",
            "/test%24file.text",
            "",
            {
                "Date": "Fri, 24 May 2013 00:00:00 GMT",
                "x-amz-storage-class": "REDUCED_REDUNDANCY",
                "x-amz-content-sha256": (
                    "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
                ),
            },
            "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        ),
        (
            "GET",
            "/",
            "lifecycle",
            {"x-amz-content-sha256": EMPTY},
            "host;x-amz-content-sha256;x-amz-date",
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
        ),
        (
            "GET",
            "/",
            "max-keys=2&prefix=J",
            {"x-amz-content-sha256": EMPTY},
            "host;x-amz-content-sha256;x-amz-date",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ],
)
def test_aws_documentation_examples(
    method: str, path: str, query: str, headers: dict[str, str], signed: str, signature: str
) -> None:
    wire = CIMultiDict({"Host": AWS_HOST, "x-amz-date": "20130524T000000Z", **headers})
    wire["Authorization"] = f"{AWS_CRED}SignedHeaders={signed},Signature={signature}"
    ctx = authenticate(method, path, query, wire, USERS, now=AWS_NOW)
    assert ctx.seed_signature == signature
    wire["Authorization"] = wire["Authorization"][:-1] + ("0" if signature[-1] != "0" else "1")
    assert _error(authenticate, method, path, query, wire, USERS, now=AWS_NOW).code == (
        "SignatureDoesNotMatch"
    )


def test_aws_documentation_presigned_example() -> None:
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )
    headers = CIMultiDict({"Host": AWS_HOST})
    ctx = authenticate("GET", "/test.txt", query, headers, USERS, now=AWS_NOW)
    assert ctx.presigned
    late = AWS_NOW + timedelta(days=1)
    assert _error(authenticate, "GET", "/test.txt", query, headers, USERS, now=late).message == (
        "Request has expired"
    )


# -- the AWS Common Runtime signer (used by AWS CLI v2 and the CRT-based SDKs) ------------


def _crt_sign(method: str, path: str, *, presign: bool, body_value: str) -> tuple[str, Any]:
    from awscrt import auth as crt_auth
    from awscrt import http as crt_http

    provider = crt_auth.AwsCredentialsProvider.new_static(ACCESS_KEY, SECRET_KEY)
    config = crt_auth.AwsSigningConfig(
        signature_type=(
            crt_auth.AwsSignatureType.HTTP_REQUEST_QUERY_PARAMS
            if presign
            else crt_auth.AwsSignatureType.HTTP_REQUEST_HEADERS
        ),
        credentials_provider=provider,
        region=REGION,
        service="s3",
        date=NOW,
        use_double_uri_encode=False,
        should_normalize_uri_path=False,
        signed_body_value=body_value,
        signed_body_header_type=(
            crt_auth.AwsSignedBodyHeaderType.NONE
            if presign
            else crt_auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256
        ),
        expiration_in_seconds=300 if presign else None,
    )
    headers = crt_http.HttpHeaders([("Host", HOST), ("x-amz-meta-tag", "a  b")])
    request = crt_http.HttpRequest(method, path, headers)
    crt_auth.aws_sign_request(request, config).result(10)
    return request.path, CIMultiDict(list(request.headers))


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    "body_value", ["UNSIGNED-PAYLOAD", EMPTY, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"]
)
def test_crt_signed_header_requests(key: str, body_value: str) -> None:
    target, headers = _crt_sign(
        "PUT", client.key_path("bucket", key) + "?tagging=", presign=False, body_value=body_value
    )
    path, _, query = target.partition("?")
    ctx = authenticate("PUT", path, query, headers, USERS, now=NOW)
    assert ctx.content_sha256 == body_value


@pytest.mark.parametrize("key", KEYS)
def test_crt_presigned_requests(key: str) -> None:
    target, headers = _crt_sign(
        "GET", client.key_path("bucket", key), presign=True, body_value="UNSIGNED-PAYLOAD"
    )
    path, _, query = target.partition("?")
    assert "X-Amz-Signature=" in query
    assert authenticate("GET", path, query, headers, USERS, now=NOW).presigned
