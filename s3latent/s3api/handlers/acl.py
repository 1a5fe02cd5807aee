"""Bucket and object ACLs (Get/Put{Bucket,Object}Acl) and the bucket's PublicAccessBlock.

Where they are kept (docs/access-control.md): a bucket's ACL is its "acl" record; an
object's is in its internal metadata when given at write time, or a PutObjectAcl record tied
to the write it was set on (so a later write of the key never inherits it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ...errors import S3Error
from .. import access, xml
from .. import acl as acls
from ..request import S3Request

if TYPE_CHECKING:
    from ..gateway import Gateway


def _xml(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/xml")


async def _acl_of_request(gw: Gateway, req: S3Request, *, owner: str, bucket_owner: str,
                          for_bucket: bool) -> acls.Acl:
    """The ACL a Put*Acl asks for: an AccessControlPolicy body, or x-amz-acl / grants."""
    body = await req.read_small_body()
    from_headers = acls.from_headers(req.headers, gw.config, owner=owner,
                                     bucket_owner=bucket_owner, for_bucket=for_bucket)
    if body.strip():
        if from_headers is not None:
            raise S3Error("UnexpectedContent", "This request does not support content "
                          "together with ACL headers.")
        return acls.from_xml(body, gw.config, owner=owner)
    if from_headers is None:
        raise S3Error("MissingSecurityHeader", "Your request was missing a required header",
                      MissingHeaderName="x-amz-acl")
    return from_headers


async def get_bucket_acl(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    owner = await access.bucket_owner(gw, req.bucket)
    return _xml(acls.render(await access.bucket_acl(gw, req.bucket, owner), gw.config))


async def put_bucket_acl(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    owner = await access.bucket_owner(gw, req.bucket)
    acl = await _acl_of_request(gw, req, owner=owner.id, bucket_owner=owner.id,
                                for_bucket=True)
    await access.refuse_public_acl(gw, req.bucket, acl)
    await gw.store.put_bucket_config(req.bucket, "acl", acl.to_json())
    return web.Response(status=200)


def _no_versions(req: S3Request) -> None:
    version = req.query.get("versionId")
    if version is not None and version != "null":
        raise S3Error("NoSuchVersion", "The specified version does not exist.",
                      Key=req.key or "", VersionId=version[:100])


async def get_object_acl(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    _no_versions(req)
    info = await gw.store.head_object(req.bucket, req.key)
    await req.check_object(info)
    owner = await access.bucket_owner(gw, req.bucket)
    acl = await access.object_acl(gw, req.bucket, req.key, info, owner.id)
    return _xml(acls.render(acl, gw.config))


async def put_object_acl(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None and req.key is not None
    _no_versions(req)
    info = await gw.store.head_object(req.bucket, req.key)
    await req.check_object(info)
    owner = await access.bucket_owner(gw, req.bucket)
    object_owner = access.object_owner_id(info, owner.id)
    acl = await _acl_of_request(gw, req, owner=object_owner, bucket_owner=owner.id,
                                for_bucket=False)
    await access.refuse_public_acl(gw, req.bucket, acl)
    await gw.store.put_object_acl_record(req.bucket, req.key, {
        "version": access.version_token(info), "acl": acl.to_json()})
    return web.Response(status=200)


# -- PublicAccessBlock ------------------------------------------------------------------------

async def get_public_access_block(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    record = await gw.store.get_bucket_config(req.bucket, access.PUBLIC_ACCESS_BLOCK)
    if not isinstance(record, dict):
        raise S3Error("NoSuchPublicAccessBlockConfiguration", resource=req.resource,
                      BucketName=req.bucket)
    return _xml(xml.render("PublicAccessBlockConfiguration",
                           {k: bool(record.get(k)) for k in access.PAB_FIELDS}))


async def put_public_access_block(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    doc = xml.parse(await req.read_small_body(), "PublicAccessBlockConfiguration")
    record: dict[str, bool] = {}
    for name in access.PAB_FIELDS:
        value = xml.text(doc.get(name)).strip().lower()
        if value not in ("", "true", "false"):
            raise S3Error("MalformedXML")
        record[name] = value == "true"
    if set(doc) - set(access.PAB_FIELDS) - {"#text"}:
        raise S3Error("MalformedXML")
    await gw.store.head_bucket(req.bucket)
    await gw.store.put_bucket_config(req.bucket, access.PUBLIC_ACCESS_BLOCK, record)
    return web.Response(status=200)


async def delete_public_access_block(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    await gw.store.put_bucket_config(req.bucket, access.PUBLIC_ACCESS_BLOCK, None)
    return web.Response(status=204)
