"""The one access decision point: who may do what (docs/access-control.md).

Every routed request is authorized here, after its signature (or its absence: anonymous) and
before its handler: the operation maps to its IAM action (`ACTIONS`), then

1. an admin user is allowed everything;
2. an explicit Deny of the bucket policy refuses;
3. the bucket owner is allowed bucket operations and object writes; an object's owner its
   object operations;
4. an ACL grant (bucket ACL for bucket operations and object writes, the object's ACL for
   object reads and ACL operations) allows;
5. an Allow of the bucket policy allows;
6. anything else is 403 AccessDenied (anonymous too).

Object operations are decided once the object is known: the handler passes the object it
read (`S3Request.check_object`), so the common case (its owner reading it) costs no backend
call beyond the read itself. Bucket records (owner, ACL, policy, public access block) come
from the store's TTL cache (objects/bucket_records.py).

Buckets without a recorded owner (created before owners were kept, or directly on the
backend) belong to the only configured user when exactly one is configured (the default
single-user setup keeps working), else to nobody: only admins, ACL grants and policies open
them.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from ..backends.base import ObjectInfo
from ..config import UserInfo
from ..errors import S3Error
from ..objects import physical
from . import acl as acls
from . import transport
from .auth import UNSIGNED_PAYLOAD, AuthContext, is_valid_content_sha256
from .policy import AccessRequest, BucketPolicy

if TYPE_CHECKING:
    from .gateway import Gateway
    from .request import S3Request

log = logging.getLogger(__name__)

PUBLIC_ACCESS_BLOCK = "public-access-block"
PAB_FIELDS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
              "RestrictPublicBuckets")
# The owner reported for a bucket nobody owns (no recorded owner, several users configured).
UNOWNED = UserInfo(access_key="", id="s3latent-unowned", display_name="unowned")

# Scopes: "service" (no bucket), "create" (CreateBucket), "bucket" (bucket ACL, bucket
# resource), "write" (bucket ACL, object resource: writes and deletes of keys), "object"
# (the object's own ACL, decided with the object).
_B, _W, _O = "bucket", "write", "object"
ACTIONS: dict[str, tuple[str, str, str | None]] = {
    "ListBuckets": ("s3:ListAllMyBuckets", "service", None),
    "CreateBucket": ("s3:CreateBucket", "create", None),
    "HeadBucket": ("s3:ListBucket", _B, "READ"),
    "ListObjects": ("s3:ListBucket", _B, "READ"),
    "ListObjectsV2": ("s3:ListBucket", _B, "READ"),
    "ListObjectVersions": ("s3:ListBucketVersions", _B, "READ"),
    "ListMultipartUploads": ("s3:ListBucketMultipartUploads", _B, "READ"),
    "GetBucketLocation": ("s3:GetBucketLocation", _B, None),
    "DeleteBucket": ("s3:DeleteBucket", _B, None),
    "GetBucketAcl": ("s3:GetBucketAcl", _B, "READ_ACP"),
    "PutBucketAcl": ("s3:PutBucketAcl", _B, "WRITE_ACP"),
    "GetBucketTagging": ("s3:GetBucketTagging", _B, None),
    "PutBucketTagging": ("s3:PutBucketTagging", _B, None),
    "DeleteBucketTagging": ("s3:PutBucketTagging", _B, None),
    "GetBucketVersioning": ("s3:GetBucketVersioning", _B, None),
    "PutBucketVersioning": ("s3:PutBucketVersioning", _B, None),
    "GetBucketPolicy": ("s3:GetBucketPolicy", _B, None),
    "PutBucketPolicy": ("s3:PutBucketPolicy", _B, None),
    "DeleteBucketPolicy": ("s3:DeleteBucketPolicy", _B, None),
    "GetBucketPolicyStatus": ("s3:GetBucketPolicyStatus", _B, None),
    "GetBucketCors": ("s3:GetBucketCORS", _B, None),
    "PutBucketCors": ("s3:PutBucketCORS", _B, None),
    "DeleteBucketCors": ("s3:PutBucketCORS", _B, None),
    "GetBucketEncryption": ("s3:GetEncryptionConfiguration", _B, None),
    "PutBucketEncryption": ("s3:PutEncryptionConfiguration", _B, None),
    "DeleteBucketEncryption": ("s3:PutEncryptionConfiguration", _B, None),
    "GetPublicAccessBlock": ("s3:GetBucketPublicAccessBlock", _B, None),
    "PutPublicAccessBlock": ("s3:PutBucketPublicAccessBlock", _B, None),
    "DeletePublicAccessBlock": ("s3:PutBucketPublicAccessBlock", _B, None),
    "GetObjectLockConfiguration": ("s3:GetBucketObjectLockConfiguration", _B, None),
    "PutObjectLockConfiguration": ("s3:PutBucketObjectLockConfiguration", _B, None),
    "GetBucket-policy": ("s3:GetBucketPolicy", _B, None),
    "GetBucket-cors": ("s3:GetBucketCORS", _B, None),
    "GetBucketLifecycleConfiguration": ("s3:GetLifecycleConfiguration", _B, None),
    "PutBucketLifecycleConfiguration": ("s3:PutLifecycleConfiguration", _B, None),
    "DeleteBucketLifecycle": ("s3:PutLifecycleConfiguration", _B, None),
    "GetBucket-website": ("s3:GetBucketWebsite", _B, None),
    "GetBucket-encryption": ("s3:GetEncryptionConfiguration", _B, None),
    "GetBucket-object-lock": ("s3:GetBucketObjectLockConfiguration", _B, None),
    "GetBucket-publicAccessBlock": ("s3:GetBucketPublicAccessBlock", _B, None),
    "GetBucket-ownershipControls": ("s3:GetBucketOwnershipControls", _B, None),
    "PutObject": ("s3:PutObject", _W, "WRITE"),
    "PostObject": ("s3:PutObject", _W, "WRITE"),
    "CopyObject": ("s3:PutObject", _W, "WRITE"),
    "CreateMultipartUpload": ("s3:PutObject", _W, "WRITE"),
    "UploadPart": ("s3:PutObject", _W, "WRITE"),
    "UploadPartCopy": ("s3:PutObject", _W, "WRITE"),
    "CompleteMultipartUpload": ("s3:PutObject", _W, "WRITE"),
    "AbortMultipartUpload": ("s3:AbortMultipartUpload", _W, "WRITE"),
    "ListParts": ("s3:ListMultipartUploadParts", _W, "READ"),
    "DeleteObject": ("s3:DeleteObject", _W, "WRITE"),
    "DeleteObjects": ("s3:DeleteObject", _W, "WRITE"),
    "GetObject": ("s3:GetObject", _O, "READ"),
    "HeadObject": ("s3:GetObject", _O, "READ"),
    "GetObjectAttributes": ("s3:GetObjectAttributes", _O, "READ"),
    "GetObjectAcl": ("s3:GetObjectAcl", _O, "READ_ACP"),
    "PutObjectAcl": ("s3:PutObjectAcl", _O, "WRITE_ACP"),
    "GetObjectTagging": ("s3:GetObjectTagging", _O, None),
    "PutObjectTagging": ("s3:PutObjectTagging", _O, None),
    "DeleteObjectTagging": ("s3:DeleteObjectTagging", _O, None),
    "GetObjectRetention": ("s3:GetObjectRetention", _O, None),
    "PutObjectRetention": ("s3:PutObjectRetention", _O, None),
    "GetObjectLegalHold": ("s3:GetObjectLegalHold", _O, None),
    "PutObjectLegalHold": ("s3:PutObjectLegalHold", _O, None),
}


_BYPASSING = frozenset({"DeleteObject", "DeleteObjects", "PutObjectRetention"})

# Object operations whose handlers call req.check_object with the object they read (no extra
# HEAD); every other object-scope operation is decided by the server before its handler runs.
CHECKED_BY_HANDLER = frozenset({
    "GetObject", "HeadObject", "GetObjectAttributes", "GetObjectAcl", "PutObjectAcl",
    "GetObjectTagging", "PutObjectTagging", "DeleteObjectTagging",
})


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a configured user, or nobody (anonymous)."""

    user: UserInfo | None

    @property
    def id(self) -> str | None:
        return self.user.id if self.user else None

    @property
    def name(self) -> str | None:
        return self.user.display_name if self.user else None

    @property
    def admin(self) -> bool:
        return bool(self.user and self.user.admin)


def is_anonymous_request(headers: Mapping[str, str], query_names: set[str]) -> bool:
    """No Authorization header and no presigned query: evaluated as anonymous."""
    return "Authorization" not in headers and not (
        query_names & {"X-Amz-Algorithm", "X-Amz-Signature", "X-Amz-Credential",
                       "AWSAccessKeyId", "Signature"})


def anonymous_auth(headers: Mapping[str, str]) -> AuthContext:
    """The AuthContext of an unsigned request: no key, an unsigned (or hashed) body."""
    declared = (headers.get("x-amz-content-sha256") or "").strip()
    mode = declared if declared and is_valid_content_sha256(declared) and \
        not declared.startswith("STREAMING-AWS4") else UNSIGNED_PAYLOAD
    return AuthContext(access_key="", content_sha256=mode, signing_key=b"",
                       seed_signature="", amz_date="", credential_scope="", presigned=False)


def caller_of(gw: Gateway, auth: AuthContext) -> Caller:
    return Caller(gw.config.user(auth.access_key) if auth.access_key else None)


def _denied(resource: str | None = None) -> S3Error:
    return S3Error("AccessDenied", resource=resource)


async def bucket_owner(gw: Gateway, bucket: str) -> UserInfo:
    """Who owns `bucket` (module docstring: unowned buckets); UNOWNED when nobody."""
    key = await gw.store.get_bucket_owner(bucket)
    user = gw.config.user(key) if key else None
    if user is not None:
        return user
    if len(gw.config.users) == 1:
        only = gw.config.user(next(iter(gw.config.users)))
        assert only is not None
        return only
    return UNOWNED


async def public_access_block(gw: Gateway, bucket: str) -> dict[str, bool]:
    record = await gw.store.get_bucket_config(bucket, PUBLIC_ACCESS_BLOCK)
    if not isinstance(record, dict):
        return {}
    return {k: bool(record.get(k)) for k in PAB_FIELDS}


async def bucket_acl(gw: Gateway, bucket: str, owner: UserInfo) -> acls.Acl:
    """The bucket's ACL in force (private to its owner when none was set)."""
    stored = acls.Acl.from_json(await gw.store.get_bucket_config(bucket, "acl"))
    return stored if stored is not None else acls.private(owner.id)


def object_owner_id(info: ObjectInfo, bucket_owner_id: str) -> str:
    return info.meta.internal.get(physical.A_OWNER) or bucket_owner_id


def version_token(info: ObjectInfo) -> str:
    """Names the write `info` came from: its token, or (older objects) ETag and time."""
    return info.meta.internal.get(physical.A_TOKEN) or \
        f"{info.etag}@{info.last_modified.isoformat()}"


async def object_acl(gw: Gateway, bucket: str, key: str, info: ObjectInfo,
                     bucket_owner_id: str) -> acls.Acl:
    """The object's ACL in force: a PutObjectAcl record of this very write, else the ACL
    given when it was written, else private to its owner."""
    owner = object_owner_id(info, bucket_owner_id)
    record = await gw.store.get_object_acl_record(bucket, key)
    if record is not None and record.get("version") == version_token(info):
        stored = acls.Acl.from_json(record.get("acl"))
        if stored is not None:
            return stored
    raw = info.meta.internal.get(physical.A_ACL)
    if raw:
        try:
            stored = acls.Acl.from_json(json.loads(raw))
        except ValueError:
            stored = None
        if stored is not None:
            return stored
    return acls.private(owner)


def write_fields(acl: acls.Acl | None, owner_id: str, token: str) -> dict[str, str]:
    """Internal metadata recording a new write's owner, ACL and token."""
    fields = {physical.A_OWNER: owner_id, physical.A_TOKEN: token}
    if acl is not None and acl != acls.private(owner_id):
        fields[physical.A_ACL] = json.dumps(acl.to_json(), separators=(",", ":"))
    return fields


# -- bucket policy --------------------------------------------------------------------------

def _load_policy(text: str, bucket: str) -> BucketPolicy | None:
    """The BucketPolicy of a stored policy text (parsed once per text); None if it no
    longer parses (stored by an older gateway with other rules): logged, never a 500."""
    try:
        return BucketPolicy.parse_cached(text, bucket)
    except S3Error:
        log.error("stored policy of %s does not parse; ignored", bucket)
        return None


async def _policy_verdict(gw: Gateway, req: S3Request, caller: Caller, action: str,
                          key: str | None, restrict_public: bool) -> str | None:
    """"Allow", "Deny" or None from the bucket policy (None: none applies, or no policy)."""
    assert req.bucket is not None
    text = await gw.store.get_bucket_config(req.bucket, "policy")
    if not isinstance(text, str) or not text:
        return None
    policy = _load_policy(text, req.bucket)
    if policy is None:
        return None

    conditions: dict[str, str | list[str]] = {}
    q = req.query
    for name in ("prefix", "delimiter", "max-keys"):
        if name in q:
            conditions[f"s3:{name}"] = q[name]
    if "x-amz-acl" in req.headers:
        conditions["s3:x-amz-acl"] = req.headers["x-amz-acl"]
    for name in ("x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id",
                 "x-amz-server-side-encryption-customer-algorithm"):
        if name in req.headers:
            conditions[f"s3:{name}"] = req.headers[name]
    tagging = req.headers.get("x-amz-tagging")
    if tagging:
        for k, v in parse_qsl(tagging, keep_blank_values=True):
            conditions[f"s3:RequestObjectTag/{k}"] = v
    if key is not None and policy.uses_existing_object_tags:
        try:
            for k, v in (await gw.store.get_tags(req.bucket, key)).items():
                conditions[f"s3:ExistingObjectTag/{k}"] = v
        except S3Error as exc:
            if exc.code not in ("NoSuchKey", "NoSuchBucket"):
                raise
    # The connection's facts, or a trusted proxy's X-Forwarded-For/-Proto (transport.py).
    client = transport.known(req.http)  # an S3Request, or a copy source's _SourceRequest
    access = AccessRequest(
        action=action, bucket=req.bucket, key=key, principal_id=caller.id,
        principal_name=caller.name, source_ip=client.client_ip,
        secure_transport=client.secure, conditions=conditions)
    verdict = policy.evaluate(access)
    if verdict == "Allow" and restrict_public and policy.is_public():
        return None  # RestrictPublicBuckets: a public policy grants nobody
    return verdict


# -- the decision ---------------------------------------------------------------------------

# The bucket owner may always read, replace and delete the bucket's policy, even one that
# denies them everything (as an account's root user may on S3): a policy can never lock its
# bucket's owner out for good.
_POLICY_ACTIONS = frozenset({"s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"})


async def authorize(gw: Gateway, req: S3Request, operation: str) -> None:
    """Allow the request, defer it to its object (req.object_check), or AccessDenied."""
    caller = caller_of(gw, req.auth)
    action, scope, permission = ACTIONS.get(operation, (f"s3:{operation}", _B, None))
    if scope in ("service", "create"):
        if caller.user is None:
            raise _denied(req.resource)
        return
    if caller.admin or req.bucket is None:
        return
    bucket = req.bucket
    try:
        owner = await bucket_owner(gw, bucket)
    except S3Error as exc:
        if exc.code == "NoSuchBucket":
            return  # the handler answers NoSuchBucket, as S3 does to anyone
        raise
    pab = await public_access_block(gw, bucket)
    key = req.key if scope != _B else None
    verdict = await _policy_verdict(gw, req, caller, action, key,
                                    pab.get("RestrictPublicBuckets", False))
    if verdict == "Deny" and not (caller.id == owner.id and action in _POLICY_ACTIONS):
        raise _denied(req.resource)
    if operation in _BYPASSING and caller.id != owner.id and \
            (req.header("x-amz-bypass-governance-retention") or "").lower() == "true":
        # Bypassing a GOVERNANCE lock is its own permission: the bucket owner's, or granted
        # by the policy (s3:BypassGovernanceRetention); an ACL's WRITE is not enough.
        bypass = await _policy_verdict(gw, req, caller, "s3:BypassGovernanceRetention", key,
                                       pab.get("RestrictPublicBuckets", False))
        if bypass != "Allow":
            raise _denied(req.resource)
    if scope in (_B, _W):
        if caller.id == owner.id:
            return
        if permission is not None:
            acl = await bucket_acl(gw, bucket, owner)
            if pab.get("IgnorePublicAcls"):
                acl = acl.without_public()
            if acl.allows(caller.id, permission):
                return
        if verdict == "Allow":
            return
        raise _denied(req.resource)
    if verdict == "Allow":
        return
    # An object operation: decided with the object the handler reads.
    assert req.key is not None
    object_key = req.key
    if caller.id != owner.id:
        acl = await bucket_acl(gw, bucket, owner)
        if pab.get("IgnorePublicAcls"):
            acl = acl.without_public()
        req.deny_missing = not acl.allows(caller.id, "READ")

    async def check(info: ObjectInfo) -> None:
        await check_object(gw, caller, bucket, object_key, info, owner, permission,
                           ignore_public=pab.get("IgnorePublicAcls", False),
                           resource=req.resource)

    req.object_check = check


async def check_object(gw: Gateway, caller: Caller, bucket: str, key: str, info: ObjectInfo,
                       owner: UserInfo, permission: str | None, *, ignore_public: bool,
                       resource: str | None) -> None:
    """The object part of the decision: its owner, then its ACL."""
    if caller.id is not None and caller.id == object_owner_id(info, owner.id):
        return
    if permission is not None:
        acl = await object_acl(gw, bucket, key, info, owner.id)
        if ignore_public:
            acl = acl.without_public()
        if acl.allows(caller.id, permission):
            return
    raise _denied(resource)


async def authorize_source(gw: Gateway, req: S3Request, bucket: str, key: str,
                           info: ObjectInfo) -> None:
    """CopyObject / UploadPartCopy: the caller must be allowed to read the source."""
    caller = caller_of(gw, req.auth)
    if caller.admin:
        return
    owner = await bucket_owner(gw, bucket)
    pab = await public_access_block(gw, bucket)
    source = _SourceRequest(req, bucket, key)
    verdict = await _policy_verdict(gw, source, caller, "s3:GetObject", key,  # type: ignore[arg-type]
                                    pab.get("RestrictPublicBuckets", False))
    if verdict == "Deny":
        raise _denied(f"/{bucket}/{key}")
    if verdict == "Allow":
        return
    await check_object(gw, caller, bucket, key, info, owner, "READ",
                       ignore_public=pab.get("IgnorePublicAcls", False),
                       resource=f"/{bucket}/{key}")


class _SourceRequest:
    """A request seen as a read of the copy source (for the policy's view of it)."""

    def __init__(self, req: S3Request, bucket: str, key: str) -> None:
        self.http, self.headers, self.bucket, self.key = req.http, {}, bucket, key
        self.query: dict[str, str] = {}


async def refuse_public_acl(gw: Gateway, bucket: str, acl: acls.Acl | None) -> None:
    """BlockPublicAcls: a write that would set a public ACL is refused."""
    if acl is not None and acl.is_public() and \
            (await public_access_block(gw, bucket)).get("BlockPublicAcls"):
        raise S3Error("AccessDenied", "Access Denied: public ACLs are blocked on this bucket "
                      "(PublicAccessBlock BlockPublicAcls).")


async def visible_buckets(gw: Gateway, req: S3Request, names: list[str]) -> list[str]:
    """ListBuckets: the caller's own buckets (all of them for an admin)."""
    caller = caller_of(gw, req.auth)
    if caller.admin:
        return names
    out = []
    for name in names:
        try:
            if (await bucket_owner(gw, name)).id == caller.id:
                out.append(name)
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise
    return out


async def new_object_fields(gw: Gateway, req: S3Request, bucket: str, *,
                            canned_value: str | None = None) -> dict[str, str]:
    """Internal metadata of an object this request writes: its owner (the writer; the
    bucket owner for an anonymous write), the ACL its headers ask for (validated, and
    refused when public ACLs are blocked), and a fresh write token."""
    caller = caller_of(gw, req.auth)
    owner = await bucket_owner(gw, bucket)
    writer = caller.id or owner.id
    acl = acls.from_headers(req.headers, gw.config, owner=writer, bucket_owner=owner.id,
                            for_bucket=False, canned_value=canned_value)
    await refuse_public_acl(gw, bucket, acl)
    return write_fields(acl, writer, secrets.token_hex(12))


async def owner_element(gw: Gateway, bucket: str) -> dict[str, str]:
    """<Owner> of a bucket (listings report it for the objects too)."""
    owner = await bucket_owner(gw, bucket)
    return {"ID": owner.id, "DisplayName": owner.display_name}


def caller_element(gw: Gateway, req: S3Request) -> dict[str, str]:
    """<Owner>/<Initiator> naming the caller (ListBuckets, multipart initiators)."""
    caller = caller_of(gw, req.auth)
    if caller.user is None:
        return {"ID": "anonymous", "DisplayName": "anonymous"}
    return {"ID": caller.user.id, "DisplayName": caller.user.display_name}


async def default_fields(gw: Gateway, bucket: str, fields: dict[str, str]) -> bool:
    """Whether a write's access fields are the default ones (bucket owner's, private),
    which an object without access fields has too."""
    return physical.A_ACL not in fields and \
        fields.get(physical.A_OWNER) == (await bucket_owner(gw, bucket)).id


async def refuse_denied_key(gw: Gateway, req: S3Request, action: str, key: str) -> None:
    """DeleteObjects: the policy judges each key (an explicit Deny of one key refuses it)."""
    caller = caller_of(gw, req.auth)
    if caller.admin or req.bucket is None:
        return
    one = _SourceRequest(req, req.bucket, key)
    if await _policy_verdict(gw, one, caller, action, key, False) == "Deny":  # type: ignore[arg-type]
        raise _denied(f"/{req.bucket}/{key}")
