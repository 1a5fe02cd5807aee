"""Bucket default encryption: Put/Get/DeleteBucketEncryption (the "encryption" record).

The default applies to PUT, POST Object, CopyObject and CreateMultipartUpload that name no
encryption themselves (s3api/sse.py); docs/encryption.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ...errors import S3Error
from .. import sse

if TYPE_CHECKING:
    from ..gateway import Gateway
    from ..request import S3Request

MAX_CONFIG_BYTES = 64 * 1024


async def put_bucket_encryption(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    record = sse.parse_configuration(await req.read_small_body(MAX_CONFIG_BYTES))
    if record["algorithm"] == "AES256" and not gw.keyring.available:
        # Every default-encrypted write would fail: say so now.
        raise S3Error("NotImplemented", f"SSE-S3 is not available on this gateway: "
                      f"{gw.keyring.why_not}.")
    await gw.store.put_bucket_config(req.bucket, sse.RECORD, record)
    return web.Response(status=200)


async def get_bucket_encryption(gw: Gateway, req: S3Request) -> web.StreamResponse:
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    record = await sse.bucket_default(gw, req.bucket)
    if record is None:
        raise S3Error("ServerSideEncryptionConfigurationNotFoundError", resource=req.resource,
                      BucketName=req.bucket)
    return web.Response(body=sse.render_configuration(record), content_type="application/xml")


async def delete_bucket_encryption(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """Idempotent, as on S3: 204 whether or not there was a configuration."""
    assert req.bucket is not None
    await gw.store.head_bucket(req.bucket)
    await gw.store.put_bucket_config(req.bucket, sse.RECORD, None)
    return web.Response(status=204)
