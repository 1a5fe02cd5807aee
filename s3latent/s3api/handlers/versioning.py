"""Bucket versioning: Get/PutBucketVersioning and ListObjectVersions (docs/versioning.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...backends.base import VersionEntry
from ...errors import S3Error
from .. import access, xml
from ..request import S3Request
from .buckets import _int_param, _key_encoder, _xml

if TYPE_CHECKING:
    from ..gateway import Gateway

async def get_bucket_versioning(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """The empty configuration until versioning was first set, as S3 answers."""
    assert req.bucket is not None
    status = await gw.store.get_bucket_versioning(req.bucket)
    return _xml(xml.render("VersioningConfiguration", {"Status": status} if status else {}))


async def put_bucket_versioning(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    doc = xml.parse(await req.read_small_body(), "VersioningConfiguration")
    status = xml.text(doc.get("Status")).strip()
    mfa = xml.text(doc.get("MfaDelete")).strip()
    if status not in ("", "Enabled", "Suspended") or mfa not in ("", "Enabled", "Disabled"):
        raise S3Error("MalformedXML")
    await gw.store.head_bucket(req.bucket)
    if mfa == "Enabled":
        raise S3Error("NotImplemented", "MFA delete is not supported by s3latent.")
    if not status:  # nothing to change (S3 accepts it)
        return web.Response(status=200)
    await gw.store.put_bucket_versioning(req.bucket, status)
    return web.Response(status=200)


async def list_object_versions(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """Versions and delete markers; a latent version shows its logical size and ETag."""
    assert req.bucket is not None
    q = req.query
    encoding = q.get("encoding-type")
    enc = _key_encoder(encoding)
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter") or None
    max_keys = _int_param(req, "max-keys", 1000, 1000)
    key_marker = q.get("key-marker") or None
    version_marker = q.get("version-id-marker") or None
    if version_marker and not key_marker:
        raise S3Error("InvalidArgument", "A version-id marker cannot be specified without a "
                      "key marker.", ArgumentName="version-id-marker",
                      ArgumentValue=version_marker)
    await gw.store.head_bucket(req.bucket)
    entries: list[VersionEntry] = []
    prefixes: list[str] = []
    truncated = False
    next_key = next_version = None
    if max_keys:
        page = await gw.store.list_object_versions(
            req.bucket, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
            version_id_marker=version_marker, max_keys=max_keys)
        entries, prefixes = page.entries, page.common_prefixes
        truncated = page.is_truncated
        next_key, next_version = page.next_key_marker, page.next_version_id_marker
    result: dict[str, Any] = {
        "Name": req.bucket,
        "Prefix": enc(prefix),
        "KeyMarker": enc(key_marker or ""),
        "VersionIdMarker": version_marker or "",
        "MaxKeys": max_keys,
        "Delimiter": enc(delimiter) if delimiter else None,
        "EncodingType": "url" if encoding else None,
        "IsTruncated": truncated,
    }
    if truncated:
        if next_key is None and (entries or prefixes):
            last = entries[-1] if entries else None
            next_key = last.key if last is not None else prefixes[-1]
            next_version = last.version_id if last is not None else None
        if next_key is not None:
            result["NextKeyMarker"] = enc(next_key)
        if next_version is not None:
            result["NextVersionIdMarker"] = next_version
    # Versions and markers interleaved in listing order (what S3 sends).
    owner = await access.owner_element(gw, req.bucket) if entries else None
    items: list[tuple[str, dict[str, Any]]] = []
    for e in entries:
        if e.delete_marker:
            items.append(("DeleteMarker", {
                "Key": enc(e.key), "VersionId": e.version_id, "IsLatest": e.is_latest,
                "LastModified": e.last_modified, "Owner": owner}))
        else:
            items.append(("Version", {
                "Key": enc(e.key), "VersionId": e.version_id, "IsLatest": e.is_latest,
                "LastModified": e.last_modified, "ETag": f'"{e.etag}"', "Size": e.size,
                "Owner": owner, "StorageClass": "STANDARD"}))
    body = xml.render("ListVersionsResult", result)
    if items or prefixes:
        body = _append(body, items, [{"Prefix": enc(p)} for p in prefixes])
    return _xml(body)


def _append(body: bytes, items: list[tuple[str, dict[str, Any]]],
            prefixes: list[dict[str, str]]) -> bytes:
    """The result with the entries in order (xml.render groups repeated names)."""
    closing = b"</ListVersionsResult>"
    parts = []
    for name, fields in items:
        parts.append(_element(name, fields))
    for p in prefixes:
        parts.append(_element("CommonPrefixes", p))
    head = body[: body.rindex(closing)]
    return head + b"".join(parts) + closing


def _element(name: str, fields: dict[str, Any]) -> bytes:
    rendered = xml.render(name, fields, namespace=False)
    start = rendered.find(b"<" + name.encode())
    return rendered[start:]
