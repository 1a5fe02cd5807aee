"""POST Object: browser form uploads authorised by a signed policy document.

The request carries no Authorization header: the form's `policy` (base64 JSON
with an expiration and conditions) is signed with SigV4 (x-amz-signature) or
SigV2 (AWSAccessKeyId + signature). Every form field must be allowed by a
condition; the file is the last field that counts and is streamed to storage,
its length checked against content-length-range as it goes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from multidict import CIMultiDict, MultiDict

from ...backends.base import STORED_HEADERS, ObjectMeta
from ...errors import S3Error
from ...sigv4 import sign_hex, signatures_equal, signing_key
from .. import access, sse, xml
from ..auth import AuthContext
from ..names import check_new_key
from ..request import S3Request, check_tags, check_user_metadata
from ..transport import refuse_insecure_sse_c
from .objects import refuse_encrypted_latent

if TYPE_CHECKING:
    from ..gateway import Gateway

MAX_FIELD = 64 * 1024
# Fields that need no condition in the policy.
_EXEMPT = {"x-amz-signature", "file", "policy", "awsaccesskeyid", "signature"}


def is_post_object(request: web.Request, bucket: str | None, key: str | None) -> bool:
    return (request.method == "POST" and bucket is not None and key is None
            and "delete" not in request.query
            and request.content_type == "multipart/form-data")


def _policy_error(detail: str) -> S3Error:
    return S3Error("AccessDenied", f"Invalid according to Policy: {detail}")


def _authenticate(fields: CIMultiDict[str], users: dict[str, str]) -> AuthContext:
    policy_b64 = fields.get("policy")
    if policy_b64 is None:
        if any(f in fields for f in ("x-amz-signature", "signature", "AWSAccessKeyId",
                                     "x-amz-credential")):
            raise S3Error("InvalidArgument", "Bucket POST must contain a field named 'policy' "
                          "when it is signed.")
        # Anonymous: allowed where the bucket's ACL or policy lets everyone write.
        return AuthContext("", "UNSIGNED-PAYLOAD", b"", "", "", "", False)
    if "x-amz-signature" in fields:
        credential = fields.get("x-amz-credential", "")
        parts = credential.split("/")
        if len(parts) != 5 or parts[3] != "s3" or parts[4] != "aws4_request" \
                or fields.get("x-amz-algorithm") != "AWS4-HMAC-SHA256":
            raise S3Error("InvalidArgument", "The form's x-amz-credential or x-amz-algorithm "
                          "is malformed.")
        access_key, date, cred_region = parts[0], parts[1], parts[2]
        secret = users.get(access_key)
        if secret is None:
            raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=access_key)
        key = signing_key(secret, date, cred_region)
        expected = sign_hex(key, policy_b64)
        if not signatures_equal(expected, fields["x-amz-signature"]):
            raise S3Error("SignatureDoesNotMatch", AWSAccessKeyId=access_key)
        scope = f"{date}/{cred_region}/s3/aws4_request"
        return AuthContext(access_key, "UNSIGNED-PAYLOAD", key, "", fields.get("x-amz-date", ""),
                           scope, True)
    access_key = fields.get("AWSAccessKeyId")
    if access_key is None or "signature" not in fields:
        raise S3Error("InvalidArgument", "Bucket POST must contain a signature: "
                      "x-amz-signature or AWSAccessKeyId and signature.")
    secret = users.get(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=access_key)
    expected = base64.b64encode(hmac.digest(secret.encode(), policy_b64.encode(),
                                            "sha1")).decode()
    if not hmac.compare_digest(expected, fields["signature"]):
        raise S3Error("SignatureDoesNotMatch", AWSAccessKeyId=access_key)
    return AuthContext(access_key, "UNSIGNED-PAYLOAD", b"", "", "", "", True)


def _policy(fields: CIMultiDict[str]) -> list[Any]:
    try:
        doc = json.loads(base64.b64decode(fields["policy"], validate=True))
        expiration = datetime.strptime(doc["expiration"].replace("Z", "+0000")[:19] + "+0000",
                                       "%Y-%m-%dT%H:%M:%S%z")
        conditions = doc["conditions"]
        if not isinstance(conditions, list):
            raise TypeError("conditions")
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise S3Error("InvalidPolicyDocument", "Invalid Policy: Invalid JSON.") from exc
    if expiration < datetime.now(UTC):
        raise _policy_error("Policy expired.")
    return conditions


def _check_conditions(conditions: list[Any], fields: CIMultiDict[str], bucket: str
                      ) -> tuple[int, int] | None:
    values = {k.lower(): v for k, v in fields.items()}
    values["bucket"] = bucket
    covered = {"bucket"}
    length_range = None
    for cond in conditions:
        if isinstance(cond, dict):
            if len(cond) != 1:
                raise S3Error("InvalidPolicyDocument", "Invalid Policy: a condition object "
                              "must have one key.")
            name, expected = next(iter(cond.items()))
            name = name.lower().lstrip("$")
            covered.add(name)
            if values.get(name) != expected:
                raise _policy_error(f"Policy Condition failed: [\"eq\", \"${name}\", "
                                    f"\"{expected}\"]")
        elif isinstance(cond, list) and len(cond) == 3:
            op = str(cond[0]).lower()
            if op == "content-length-range":
                try:
                    length_range = (int(cond[1]), int(cond[2]))
                except (TypeError, ValueError) as exc:
                    raise S3Error("InvalidPolicyDocument", "Invalid Policy: bad "
                                  "content-length-range.") from exc
                continue
            name = str(cond[1]).lower().lstrip("$")
            covered.add(name)
            value = values.get(name, "")
            if op == "eq" and value != cond[2]:
                raise _policy_error(f"Policy Condition failed: {json.dumps(cond)}")
            if op == "starts-with" and not value.startswith(str(cond[2])):
                raise _policy_error(f"Policy Condition failed: {json.dumps(cond)}")
            if op not in ("eq", "starts-with"):
                raise S3Error("InvalidPolicyDocument", f"Invalid Policy: unknown condition "
                              f"{cond[0]!r}.")
        else:
            raise S3Error("InvalidPolicyDocument", "Invalid Policy: Invalid Condition.")
    extra = [k for k in values if k not in covered and k not in _EXEMPT
             and not k.startswith("x-ignore-") and k not in ("x-amz-algorithm",
                                                            "x-amz-credential",
                                                            "x-amz-date")]
    if extra:
        raise _policy_error(f"Extra input fields: {extra[0]}")
    return length_range


async def post_object(gw: Gateway, request: web.Request, bucket: str,
                      request_id: str) -> web.StreamResponse:
    reader = await request.multipart()
    fields: CIMultiDict[str] = CIMultiDict()
    file_part: BodyPartReader | None = None
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.name.lower() == "file":
            file_part = part
            break
        if len(fields) > 200:
            raise S3Error("InvalidArgument", "Too many form fields.")
        value = bytearray()
        while chunk := await part.read_chunk(8192):
            value += chunk
            if len(value) > MAX_FIELD:
                raise S3Error("InvalidArgument", f"The form field {part.name} is too large.")
        fields[part.name] = value.decode("utf-8", "replace")
    if file_part is None:
        raise S3Error("InvalidArgument", "POST requires exactly one file upload per request.")
    if "key" not in fields:
        raise S3Error("InvalidArgument", "Bucket POST must contain a field named 'key'.  If it "
                      "is specified, please check the order of the fields.")
    auth = _authenticate(fields, gw.config.users)
    conditions = _policy(fields) if auth.access_key else []
    filename = file_part.filename or ""
    key = fields["key"].replace("${filename}", filename)
    fields["key"] = key
    # An anonymous form has no policy document to hold its fields to.
    length_range = _check_conditions(conditions, fields, bucket) if auth.access_key else None
    check_new_key(key)
    s3req = S3Request(request, request_id, bucket, key, MultiDict(), auth)
    await access.authorize(gw, s3req, "PostObject")
    meta = ObjectMeta(content_type=fields.get("Content-Type") or "binary/octet-stream")
    for name, value in fields.items():
        lower = name.lower()
        if lower.startswith("x-amz-meta-"):
            meta.metadata[lower[len("x-amz-meta-"):]] = value
        elif lower in STORED_HEADERS:
            meta.headers[lower] = value
    check_user_metadata(meta.metadata)
    if "tagging" in fields:
        meta.tags = _tags_from_xml(fields["tagging"])
    await gw.store.head_bucket(bucket)
    meta.internal.update(await access.new_object_fields(gw, s3req, bucket,
                                                        canned_value=fields.get("acl")))

    async def body() -> AsyncIterator[bytes]:
        size = 0
        while True:
            chunk = await file_part.read_chunk(256 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if length_range and size > length_range[1]:
                raise S3Error("EntityTooLarge", ProposedSize=str(size),
                              MaxSizeAllowed=str(length_range[1]))
            yield chunk
        if length_range and size < length_range[0]:
            raise S3Error("EntityTooSmall", ProposedSize=str(size),
                          MinSizeAllowed=str(length_range[0]))

    refuse_insecure_sse_c(fields, gw.proxies.of(request).secure,
                          gw.config.encryption.sse_c_require_tls)
    encrypt = await sse.for_write(gw, bucket, fields)
    stream: AsyncIterable[bytes] = body()
    if encrypt is not None:
        refuse_encrypted_latent(meta)
        meta.internal.update(encrypt.fields)
        stream = encrypt.body(stream, meta=meta)
    info = await gw.store.put_object(bucket, key, stream, meta)
    if encrypt is not None:
        await sse.index_written(gw, bucket, key, info)
    location = f"http://{request.host}/{bucket}/{key}"
    headers = {"ETag": f'"{sse.etag_of(info)}"', "Location": location}
    headers.update(encrypt.headers if encrypt is not None else {})
    redirect = fields.get("success_action_redirect")
    if redirect:
        sep = "&" if "?" in redirect else "?"
        headers["Location"] = (f"{redirect}{sep}bucket={quote(bucket)}&key={quote(key)}"
                               f"&etag={quote(headers['ETag'])}")
        return web.Response(status=303, headers=headers)
    status = fields.get("success_action_status", "204")
    if status == "201":
        doc = xml.render("PostResponse", {"Location": location, "Bucket": bucket, "Key": key,
                                          "ETag": headers["ETag"]}, namespace=False)
        return web.Response(status=201, body=doc, content_type="application/xml",
                            headers=headers)
    return web.Response(status=200 if status == "200" else 204, headers=headers)


def _tags_from_xml(document: str) -> dict[str, str]:
    doc = xml.parse(document.encode(), "Tagging")
    tag_set = doc.get("TagSet") or {}
    tags = {xml.text(t.get("Key")): xml.text(t.get("Value"))
            for t in xml.as_list(tag_set.get("Tag") if isinstance(tag_set, dict) else None)
            if isinstance(t, dict)}
    check_tags(tags)
    return tags
