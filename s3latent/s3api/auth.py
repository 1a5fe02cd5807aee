"""AWS Signature Version 4 verification for S3 requests (header and presigned forms).

Clients do not all spell a request the same way: botocore signs the path exactly as
it sends it and the query as it sends it, other clients sign an RFC 3986
normalisation, and HTTP libraries re-quote URLs (yarl decodes %7E, some send '+').
The canonical request is therefore built first the way S3 and botocore build it,
and only when that fails, from the other spellings of the *same* bytes on the
wire. Every candidate decodes to the same path and query the server acts on, so
this widens compatibility without letting a signature cover a different request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_from_bytes, unquote, unquote_to_bytes

from ..errors import S3Error
from ..httpdate import parse_http_date
from ..sigv4 import ALGORITHM, SERVICE, TERMINAL, sign_hex, signatures_equal, signing_key

AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_PRESIGN_EXPIRES = 604800

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
PAYLOAD_MODES = frozenset(
    {UNSIGNED_PAYLOAD, STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_TRAILER}
)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_UNRESERVED = re.compile(r"[A-Za-z0-9\-_.~]*")
_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
_SIGV2_UNSUPPORTED = (
    "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
)
_CREDENTIAL_FORMAT = 'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'


@dataclass(frozen=True)
class AuthContext:
    """What the payload reader needs to continue the signature chain into the body."""

    access_key: str
    # 64-hex, UNSIGNED-PAYLOAD or STREAMING-*. Presigned: UNSIGNED-PAYLOAD, unless the URL
    # signed an x-amz-content-sha256 header, whose value is then verified like any other.
    content_sha256: str
    signing_key: bytes
    seed_signature: str
    amz_date: str  # yyyymmddTHHMMSSZ
    credential_scope: str  # date/region/s3/aws4_request
    presigned: bool


def is_valid_content_sha256(value: str) -> bool:
    """Whether `value` is one of the x-amz-content-sha256 forms S3 accepts."""
    return value in PAYLOAD_MODES or _HEX64.fullmatch(value) is not None


def _wire_bytes(value: str) -> bytes:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape; undo that exactly.
    return value.encode("utf-8", "surrogateescape")


def _uri_encode(raw: bytes, safe: str) -> str:
    return quote_from_bytes(raw, safe=safe)


def iter_canonical_uris(path: str) -> Iterator[str]:
    """Candidate canonical URIs: the path as sent first (S3 and botocore), then RFC 3986."""
    as_sent = path or "/"
    yield as_sent
    normalised = _uri_encode(unquote_to_bytes(_wire_bytes(as_sent)), safe="/~")
    if normalised != as_sent:
        yield normalised


def canonical_uris(path: str) -> list[str]:
    return list(iter_canonical_uris(path))


def _split_query(query_string: str) -> list[tuple[str, str]]:
    pairs = []
    for part in query_string.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((key, value))
    return pairs


def _encode_component(raw: str, plus_is_space: bool) -> str:
    if _UNRESERVED.fullmatch(raw):
        return raw
    data = _wire_bytes(raw)
    if plus_is_space:
        data = data.replace(b"+", b" ")
    return _uri_encode(unquote_to_bytes(data), safe="-_.~")


def iter_canonical_queries(pairs: list[tuple[str, str]]) -> Iterator[str]:
    """Candidate canonical query strings for the raw (key, value) pairs, best first.

    The first is the RFC 3986 form S3 computes (and botocore produces, since it
    sends that form); then '+' read as a space (form encoding); then the raw pairs
    sorted without re-encoding (botocore's form for a URL it was handed verbatim).
    """
    seen: set[str] = set()
    for plus_is_space in (False, True):
        if plus_is_space and not any("+" in k or "+" in v for k, v in pairs):
            continue
        encoded = sorted(
            (_encode_component(k, plus_is_space), _encode_component(v, plus_is_space))
            for k, v in pairs
        )
        query = "&".join(f"{k}={v}" for k, v in encoded)
        if query not in seen:
            seen.add(query)
            yield query
    raw = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    if raw not in seen:
        yield raw


def canonical_queries(pairs: list[tuple[str, str]]) -> list[str]:
    return list(iter_canonical_queries(pairs))


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    value = headers.get(name)
    return [] if value is None else [value]


def canonical_headers(headers: Mapping[str, str], signed: list[str]) -> str:
    """`name:value\\n` for each signed header; repeated headers joined by ',', spaces folded."""
    lines = []
    for name in signed:
        values = ",".join(" ".join(v.split()) for v in _header_values(headers, name))
        lines.append(f"{name}:{values}\n")
    return "".join(lines)


def _parse_amz_date(value: str) -> datetime | None:
    if not _AMZ_DATE.fullmatch(value):
        return None
    try:
        return datetime(
            int(value[0:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[9:11]),
            int(value[11:13]),
            int(value[13:15]),
            tzinfo=UTC,
        )
    except ValueError:
        return None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Parsed:
    access_key: str
    date: str
    region: str
    service: str
    terminal: str
    signed_headers: list[str]
    signature: str
    amz_date: str
    when: datetime


def _malformed(presigned: bool, detail: str, **extra: str) -> S3Error:
    if presigned:
        return S3Error(
            "AuthorizationQueryParametersError",
            f"Error parsing the X-Amz-Credential parameter; {detail}"
            if detail.startswith("the Credential")
            else detail,
            **extra,
        )
    return S3Error(
        "AuthorizationHeaderMalformed", f"The authorization header is malformed; {detail}", **extra
    )


def _parse_credential(credential: str, presigned: bool) -> tuple[str, str, str, str, str]:
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not all(parts):
        raise _malformed(presigned, f"the Credential is mal-formed; {_CREDENTIAL_FORMAT}")
    access_key, date, region, service, terminal = parts
    if not re.fullmatch(r"\d{8}", date):
        raise _malformed(presigned, f"the Credential is mal-formed; {_CREDENTIAL_FORMAT}")
    return access_key, date, region, service, terminal


def _parse_signed_headers(value: str, presigned: bool) -> list[str]:
    names = value.split(";")
    if not value or any(not n or n != n.strip().lower() for n in names):
        raise _malformed(presigned, "the SignedHeaders are mal-formed.")
    return names


def _parse_authorization(value: str, headers: Mapping[str, str]) -> _Parsed:
    scheme, _, rest = value.strip().partition(" ")
    if scheme != ALGORITHM:
        if scheme == "AWS" or scheme.startswith("AWS4-"):
            raise S3Error("InvalidRequest", _SIGV2_UNSUPPORTED)
        raise S3Error(
            "InvalidArgument",
            "Unsupported Authorization Type",
            ArgumentName="Authorization",
            ArgumentValue=value[:200],
        )
    fields: dict[str, str] = {}
    for item in rest.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or key in fields:
            raise _malformed(
                False,
                "the authorization header requires three components: "
                "Credential, SignedHeaders, and Signature.",
            )
        fields[key] = val
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise _malformed(
            False,
            "the authorization header requires three components: "
            "Credential, SignedHeaders, and Signature.",
        )
    access_key, date, region, service, terminal = _parse_credential(fields["Credential"], False)
    signed = _parse_signed_headers(fields["SignedHeaders"], False)
    signature = fields["Signature"]
    if not _HEX64.fullmatch(signature):
        raise _malformed(False, "the Signature is mal-formed.")

    amz_date = headers.get("x-amz-date")
    when: datetime | None
    if amz_date is not None:
        when = _parse_amz_date(amz_date.strip())
        amz_date = amz_date.strip()
    else:
        http_date = headers.get("Date")
        when = parse_http_date(http_date)
        amz_date = when.strftime(AMZ_DATE_FORMAT) if when else None
    if when is None or amz_date is None:
        raise S3Error(
            "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
        )
    return _Parsed(access_key, date, region, service, terminal, signed, signature, amz_date, when)


def _unquote(text: str) -> str:
    return unquote(text) if "%" in text else text


def _presign_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in pairs:
        name = _unquote(key)
        if name in _PRESIGN_PARAMS:
            if name in found:
                raise S3Error(
                    "AuthorizationQueryParametersError",
                    f"{name} must be specified only once.",
                )
            found[name] = _unquote(value)
    return found


def _parse_presigned(params: dict[str, str], now: datetime, max_skew: timedelta) -> _Parsed:
    missing = [p for p in _PRESIGN_PARAMS if p not in params]
    if missing:
        raise S3Error(
            "AuthorizationQueryParametersError",
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
            "and X-Amz-Expires parameters.",
        )
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise S3Error(
            "AuthorizationQueryParametersError",
            'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"',
        )
    access_key, date, region, service, terminal = _parse_credential(
        params["X-Amz-Credential"], True
    )
    amz_date = params["X-Amz-Date"]
    when = _parse_amz_date(amz_date)
    if when is None:
        raise S3Error(
            "AuthorizationQueryParametersError",
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"",
        )
    raw_expires = params["X-Amz-Expires"]
    if not re.fullmatch(r"-?\d{1,12}", raw_expires):
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires should be a number")
    expires = int(raw_expires)
    if expires == 0:  # valid for no time at all: expired, as AWS answers (403, not 400)
        raise S3Error("AccessDenied", "Request has expired", **{
            "X-Amz-Expires": "0", "Expires": _iso(when), "ServerTime": _iso(now)})
    if expires < 1:
        raise S3Error(
            "AuthorizationQueryParametersError", "X-Amz-Expires must be a positive number"
        )
    if expires > MAX_PRESIGN_EXPIRES:
        raise S3Error(
            "AuthorizationQueryParametersError",
            "X-Amz-Expires must be less than a week (in seconds) that is 604800",
        )
    signed = _parse_signed_headers(params["X-Amz-SignedHeaders"], True)
    signature = params["X-Amz-Signature"]
    if not _HEX64.fullmatch(signature):
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Signature is mal-formed.")
    if now > when + timedelta(seconds=expires):
        raise S3Error(
            "AccessDenied",
            "Request has expired",
            **{
                "X-Amz-Expires": str(expires),
                "Expires": _iso(when + timedelta(seconds=expires)),
                "ServerTime": _iso(now),
            },
        )
    if when - now > max_skew:
        raise S3Error("AccessDenied", "Request is not valid yet", ServerTime=_iso(now))
    return _Parsed(access_key, date, region, service, terminal, signed, signature, amz_date, when)


def _check_scope(parsed: _Parsed, presigned: bool, region: str | None) -> None:
    if parsed.service != SERVICE:
        raise _malformed(
            presigned, f'incorrect service "{parsed.service}". This endpoint belongs to "s3".'
        )
    if parsed.terminal != TERMINAL:
        raise _malformed(
            presigned,
            f'incorrect terminal "{parsed.terminal}". This endpoint uses "aws4_request".',
        )
    if region is not None and parsed.region != region:
        raise _malformed(
            presigned,
            f"the region '{parsed.region}' is wrong; expecting '{region}'",
            Region=region,
        )
    if parsed.date != parsed.amz_date[:8]:
        if presigned:
            raise S3Error(
                "AuthorizationQueryParametersError",
                f'Invalid credential date "{parsed.date}". This date is not the same as '
                f'X-Amz-Date: "{parsed.amz_date[:8]}".',
            )
        raise _malformed(False, "Invalid credential date. Date is not the same as X-Amz-Date.")
    if "host" not in parsed.signed_headers:
        raise _malformed(presigned, "the host header must be signed.")


def _check_unsigned_amz_headers(
    headers: Mapping[str, str], signed: list[str], presigned: bool
) -> None:
    # An unsigned x-amz-* header could change what the request does (copy source,
    # ACL, checksum) without the key holder's consent, so S3 refuses it.
    signed_set = set(signed)
    unsigned = sorted(
        {
            name.lower()
            for name in headers.keys()
            if name.lower().startswith("x-amz-")
            and name.lower() not in signed_set
            and not (presigned and name.lower() == "x-amz-content-sha256")
        }
    )
    if unsigned:
        raise S3Error(
            "AccessDenied",
            "There were headers present in the request which were not signed",
            HeadersNotSigned=", ".join(unsigned),
        )


def authenticate(
    method: str,
    path: str,
    query_string: str,
    headers: Mapping[str, str],
    users: Mapping[str, str],
    *,
    now: datetime | None = None,
    max_skew: timedelta = timedelta(minutes=15),
    region: str | None = None,
) -> AuthContext:
    """Verify a request's SigV4 signature; S3Error with the code S3 would send otherwise.

    `path` and `query_string` are exactly as received (still percent-encoded);
    `region`, when given, is enforced against the credential scope.
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    pairs = _split_query(query_string)
    authorization = headers.get("Authorization")
    query_names = {_unquote(k) for k, _ in pairs}
    presigned_query = "X-Amz-Algorithm" in query_names or "X-Amz-Signature" in query_names
    if authorization is not None and presigned_query:
        raise S3Error(
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
            ArgumentName="Authorization",
            ArgumentValue=authorization[:200],
        )

    if authorization is not None:
        presigned = False
        parsed = _parse_authorization(authorization, headers)
        skew = abs(now - parsed.when)
        if skew > max_skew:
            raise S3Error(
                "RequestTimeTooSkewed",
                RequestTime=headers.get("x-amz-date") or headers.get("Date") or "",
                ServerTime=_iso(now),
                MaxAllowedSkewMilliseconds=str(int(max_skew.total_seconds() * 1000)),
            )
        content_sha256 = headers.get("x-amz-content-sha256")
        if content_sha256 is None:
            raise S3Error(
                "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
            )
        content_sha256 = content_sha256.strip()
        if not is_valid_content_sha256(content_sha256):
            raise S3Error(
                "InvalidArgument",
                "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a valid sha256 value.",
                ArgumentName="x-amz-content-sha256",
                ArgumentValue=content_sha256[:200],
            )
        payload_hashes = [content_sha256]
        canonical_pairs = pairs
    elif presigned_query:
        presigned = True
        parsed = _parse_presigned(_presign_params(pairs), now, max_skew)
        header_sha = headers.get("x-amz-content-sha256")
        if (
            header_sha is not None
            and "x-amz-content-sha256" in parsed.signed_headers
            and is_valid_content_sha256(header_sha.strip())
        ):
            content_sha256 = header_sha.strip()
            payload_hashes = [content_sha256, UNSIGNED_PAYLOAD]
        else:
            content_sha256 = UNSIGNED_PAYLOAD
            payload_hashes = [UNSIGNED_PAYLOAD]
        canonical_pairs = [(k, v) for k, v in pairs if _unquote(k) != "X-Amz-Signature"]
    elif "AWSAccessKeyId" in query_names and "Signature" in query_names:
        raise S3Error("InvalidRequest", _SIGV2_UNSUPPORTED)
    else:
        raise S3Error("AccessDenied")

    _check_scope(parsed, presigned, region)
    _check_unsigned_amz_headers(headers, parsed.signed_headers, presigned)

    secret = users.get(parsed.access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=parsed.access_key)

    key = signing_key(secret, parsed.date, parsed.region, parsed.service)
    scope = f"{parsed.date}/{parsed.region}/{parsed.service}/{parsed.terminal}"
    header_block = canonical_headers(headers, parsed.signed_headers)
    signed_names = ";".join(parsed.signed_headers)
    first: tuple[str, str] | None = None
    for uri in iter_canonical_uris(path):
        for query in iter_canonical_queries(canonical_pairs):
            for payload_hash in payload_hashes:
                canonical_request = (
                    f"{method.upper()}\n{uri}\n{query}\n{header_block}\n"
                    f"{signed_names}\n{payload_hash}"
                )
                string_to_sign = (
                    f"{ALGORITHM}\n{parsed.amz_date}\n{scope}\n"
                    + hashlib.sha256(_wire_bytes(canonical_request)).hexdigest()
                )
                expected = sign_hex(key, string_to_sign)
                if signatures_equal(expected, parsed.signature):
                    return AuthContext(
                        access_key=parsed.access_key,
                        content_sha256=content_sha256,
                        signing_key=key,
                        seed_signature=expected,
                        amz_date=parsed.amz_date,
                        credential_scope=scope,
                        presigned=presigned,
                    )
                if first is None:
                    first = (canonical_request, string_to_sign)
    assert first is not None
    extra: dict[str, Any] = {
        "AWSAccessKeyId": parsed.access_key,
        "StringToSign": first[1],
        "SignatureProvided": parsed.signature,
        "CanonicalRequest": first[0],
    }
    raise S3Error("SignatureDoesNotMatch", **extra)
