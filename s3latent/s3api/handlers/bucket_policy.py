"""Bucket policies: Put/Get/DeleteBucketPolicy and GetBucketPolicyStatus.

The policy is kept as the text the client sent (record "policy"): GetBucketPolicy
answers it byte for byte, and every node parses it again when it reads the record, so
the stored form never depends on this module's version. Who may call these operations
is the access decision point's business (the bucket owner may always manage them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...errors import S3Error
from .. import xml
from ..policy import MAX_POLICY_BYTES, BucketPolicy, malformed
from ..request import S3Request

if TYPE_CHECKING:
    from ..gateway import Gateway

RECORD = "policy"
PUBLIC_ACCESS_BLOCK = "public-access-block"

# ACL grantees that make a bucket public (GetBucketPolicyStatus, as s3-tests expect).
_PUBLIC_GROUPS = ("http://acs.amazonaws.com/groups/global/AllUsers",
                  "http://acs.amazonaws.com/groups/global/AuthenticatedUsers")
_PUBLIC_CANNED = ("public-read", "public-read-write", "authenticated-read")


async def put_bucket_policy(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """Validate, refuse a public policy where BlockPublicPolicy is set, then store."""
    assert req.bucket is not None
    try:
        text, policy = await _read_policy(req)
    except S3Error:
        # S3 looks the bucket up first: NoSuchBucket, not a refusal that hints it exists.
        await gw.store.head_bucket(req.bucket)
        raise
    block = await gw.store.get_bucket_config(req.bucket, PUBLIC_ACCESS_BLOCK)
    if isinstance(block, dict) and block.get("BlockPublicPolicy") and policy.is_public():
        raise S3Error("AccessDenied", "The bucket's public access block forbids public "
                      "policies (BlockPublicPolicy).", resource=req.resource)
    await gw.store.put_bucket_config(req.bucket, RECORD, text)
    return web.Response(status=204)


async def _read_policy(req: S3Request) -> tuple[str, BucketPolicy]:
    """The body as text and parsed, or MalformedPolicy (bad UTF-8, too large, invalid)."""
    assert req.bucket is not None
    try:
        body = await req.read_small_body()
    except S3Error as exc:
        if exc.code == "MalformedXML":  # read_small_body's "too large"
            raise malformed(f"Policies must be no larger than {MAX_POLICY_BYTES} bytes"
                            ) from exc
        raise
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise malformed("This policy contains invalid Json (not UTF-8)") from exc
    return text, BucketPolicy.parse(text, req.bucket)


async def get_bucket_policy(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """The stored text, exactly as it was put."""
    assert req.bucket is not None
    text = await gw.store.get_bucket_config(req.bucket, RECORD)
    if not isinstance(text, str):
        raise S3Error("NoSuchBucketPolicy", resource=req.resource, BucketName=req.bucket)
    return web.Response(body=text.encode("utf-8"), content_type="application/json")


async def delete_bucket_policy(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """Idempotent, as on S3: 204 whether or not the bucket had a policy."""
    assert req.bucket is not None
    await gw.store.put_bucket_config(req.bucket, RECORD, None)
    return web.Response(status=204)


async def get_bucket_policy_status(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """IsPublic: the policy grants to everyone unnarrowed, or the bucket ACL is public."""
    assert req.bucket is not None
    text = await gw.store.get_bucket_config(req.bucket, RECORD)
    public = False
    if isinstance(text, str):
        try:
            public = BucketPolicy.parse_cached(text, req.bucket).is_public()
        except S3Error:  # stored by a gateway with other rules: flag it, never hide it
            public = True
    if not public:
        public = acl_is_public(await gw.store.get_bucket_config(req.bucket, "acl"))
    body = xml.render("PolicyStatus", {"IsPublic": public})
    return web.Response(body=body, content_type="application/xml")


def acl_is_public(record: Any) -> bool:
    """Whether an ACL record grants to AllUsers or AuthenticatedUsers.

    Read without assuming the record's exact layout (the ACL module owns it): any
    canned public ACL name or public group URI anywhere in the record counts.
    """
    if isinstance(record, str):
        return record in _PUBLIC_CANNED or record in _PUBLIC_GROUPS
    if isinstance(record, dict):
        return any(acl_is_public(v) for v in record.values())
    if isinstance(record, list):
        return any(acl_is_public(v) for v in record)
    return False
