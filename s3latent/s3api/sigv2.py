"""AWS Signature Version 2, header and query (presigned) forms.

boto3's `generate_presigned_url` and `aws s3 presign` produce SigV2 query URLs
when the client talks to a custom endpoint without `signature_version="s3v4"`,
and older tools sign headers with it; S3 still accepts both. The body is not
signed by SigV2: Content-MD5, when sent, is what protects it.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

from ..errors import S3Error
from ..httpdate import parse_http_date
from .auth import AuthContext

# Query parameters that are part of the signed resource (as botocore's HmacV1Auth).
SUBRESOURCES = frozenset({
    "accelerate", "acl", "cors", "defaultObjectAcl", "location", "logging", "partNumber",
    "policy", "requestPayment", "torrent", "versioning", "versionId", "versions", "website",
    "uploads", "uploadId", "response-content-type", "response-content-language",
    "response-expires", "response-cache-control", "response-content-disposition",
    "response-content-encoding", "delete", "lifecycle", "tagging", "restore", "storageClass",
    "notification", "replication", "analytics", "metrics", "inventory", "select",
    "select-type", "object-lock", "attributes",
})


def is_sigv2(headers: Mapping[str, str], query_names: set[str]) -> bool:
    auth = headers.get("Authorization", "")
    if auth.startswith("AWS ") and ":" in auth:
        return True
    return "AWSAccessKeyId" in query_names and "Signature" in query_names and \
        "X-Amz-Algorithm" not in query_names


def _pairs(query_string: str) -> list[tuple[str, str]]:
    out = []
    for part in query_string.split("&") if query_string else []:
        key, _, value = part.partition("=")
        out.append((unquote(key), unquote(value)))
    return out


def string_to_sign(method: str, path: str, query_string: str, headers: Mapping[str, str],
                   date_or_expires: str) -> str:
    amz: dict[str, list[str]] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-amz-"):
            amz.setdefault(lower, []).append(" ".join(value.strip().split()))
    canonical_amz = "".join(f"{k}:{','.join(v)}\n" for k, v in sorted(amz.items()))
    resource = path
    sub = sorted((k, v) for k, v in _pairs(query_string) if k in SUBRESOURCES)
    if sub:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in sub)
    return "\n".join([method, headers.get("Content-MD5", ""), headers.get("Content-Type", ""),
                      date_or_expires]) + "\n" + canonical_amz + resource


def _sign(secret: str, text: str) -> str:
    return base64.b64encode(hmac.digest(secret.encode(), text.encode("utf-8"), "sha1")).decode()


def authenticate_v2(method: str, path: str, query_string: str, headers: Mapping[str, str],
                    users: Mapping[str, str], *, now: datetime,
                    max_skew: timedelta) -> AuthContext:
    """Verify a SigV2 request; S3Error as S3 answers otherwise."""
    params = dict(_pairs(query_string))
    auth = headers.get("Authorization", "")
    presigned = not auth.startswith("AWS ")
    if presigned:
        access_key, signature = params["AWSAccessKeyId"], params["Signature"]
        expires = params.get("Expires", "")
        if not expires.isdigit():
            raise S3Error("AccessDenied", "Query-string authentication requires the Signature, "
                          "Expires and AWSAccessKeyId parameters")
        if datetime.fromtimestamp(int(expires), UTC) < now:
            raise S3Error("AccessDenied", "Request has expired", Expires=expires,
                          ServerTime=now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        date_line = expires
        query_for_resource = "&".join(
            p for p in query_string.split("&")
            if p.partition("=")[0] not in ("AWSAccessKeyId", "Signature", "Expires"))
    else:
        access_key, _, signature = auth[4:].strip().rpartition(":")
        raw_date = headers.get("x-amz-date") or headers.get("Date")
        when = parse_http_date(raw_date)
        if when is None:
            raise S3Error("AccessDenied", "AWS authentication requires a valid Date or "
                          "x-amz-date header")
        if abs(now - when) > max_skew:
            raise S3Error("RequestTimeTooSkewed", RequestTime=raw_date or "",
                          ServerTime=now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        date_line = "" if "x-amz-date" in headers else headers.get("Date", "")
        query_for_resource = query_string
    secret = users.get(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=access_key)
    text = string_to_sign(method, path, query_for_resource, headers, date_line)
    if not hmac.compare_digest(_sign(secret, text), signature):
        raise S3Error("SignatureDoesNotMatch", AWSAccessKeyId=access_key, StringToSign=text)
    return AuthContext(access_key, "UNSIGNED-PAYLOAD", b"", "", "", "", presigned)
