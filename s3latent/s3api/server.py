"""The aiohttp application: request ids, authentication, dispatch, S3 error bodies.

Dispatch follows S3's REST layout: the method, whether a bucket and key are
present, and the sub-resource in the query string pick the operation. Anything
S3 defines that s3latent does not do answers 501 NotImplemented, never a guess.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..errors import S3Error
from . import access, peer, xml
from .auth import authenticate
from .gateway import Gateway
from .handlers import (
    acl,
    bucket_encryption,
    bucket_policy,
    buckets,
    cors,
    lifecycle,
    multipart,
    object_lock,
    objects,
    post_object,
    versioning,
)
from .names import check_bucket_name
from .request import S3Request, parse_query, split_target
from .sigv2 import authenticate_v2, is_sigv2
from .transport import refuse_insecure_sse_c

log = logging.getLogger("s3latent.access")
Handler = Callable[["Gateway", S3Request], Awaitable[web.StreamResponse]]

# Sub-resources S3 defines on buckets and objects that we do not implement.
_UNSUPPORTED_SUBRESOURCES = (
    "accelerate", "analytics", "intelligent-tiering", "inventory", "logging", "metrics",
    "notification", "replication", "requestPayment", "restore", "select", "torrent",
    "renameObject", "session",
    "metadataTable", "metadataConfiguration",
)


def route(req: S3Request) -> tuple[str, Handler]:
    """(operation name, handler) for a request, or S3Error."""
    q, method = req.query, req.method
    for sub in _UNSUPPORTED_SUBRESOURCES:
        if sub in q:
            raise S3Error("NotImplemented", f"The '{sub}' sub-resource is not supported.")
    if req.bucket is None:
        if method == "GET":
            return "ListBuckets", buckets.list_buckets
        raise S3Error("MethodNotAllowed", Method=method, ResourceType="SERVICE")

    if req.key is None:
        if method == "GET":
            if "location" in q:
                return "GetBucketLocation", buckets.get_bucket_location
            if "uploads" in q:
                return "ListMultipartUploads", multipart.list_multipart_uploads
            if "versioning" in q:
                return "GetBucketVersioning", versioning.get_bucket_versioning
            if "versions" in q:
                return "ListObjectVersions", versioning.list_object_versions
            if "object-lock" in q:
                return ("GetObjectLockConfiguration",
                        object_lock.get_object_lock_configuration)
            if "acl" in q:
                return "GetBucketAcl", acl.get_bucket_acl
            if "publicAccessBlock" in q:
                return "GetPublicAccessBlock", acl.get_public_access_block
            if "tagging" in q:
                return "GetBucketTagging", buckets.get_bucket_tagging
            if "policy" in q:
                return "GetBucketPolicy", bucket_policy.get_bucket_policy
            if "policyStatus" in q:
                return "GetBucketPolicyStatus", bucket_policy.get_bucket_policy_status
            if "cors" in q:
                return "GetBucketCors", cors.get_bucket_cors
            if "lifecycle" in q:
                return "GetBucketLifecycleConfiguration", lifecycle.get_bucket_lifecycle
            if "encryption" in q:
                return "GetBucketEncryption", bucket_encryption.get_bucket_encryption
            for sub in buckets.NOT_CONFIGURED:
                if sub in q:
                    return f"GetBucket-{sub}", buckets.get_bucket_not_configured
            return ("ListObjectsV2" if q.get("list-type") == "2" else "ListObjects",
                    buckets.list_objects)
        if method == "PUT":
            if "tagging" in q:
                return "PutBucketTagging", buckets.put_bucket_tagging
            if "acl" in q:
                return "PutBucketAcl", acl.put_bucket_acl
            if "publicAccessBlock" in q:
                return "PutPublicAccessBlock", acl.put_public_access_block
            if "versioning" in q:
                return "PutBucketVersioning", versioning.put_bucket_versioning
            if "object-lock" in q:
                return ("PutObjectLockConfiguration",
                        object_lock.put_object_lock_configuration)
            if "policy" in q:
                return "PutBucketPolicy", bucket_policy.put_bucket_policy
            if "cors" in q:
                return "PutBucketCors", cors.put_bucket_cors
            if "lifecycle" in q:
                return "PutBucketLifecycleConfiguration", lifecycle.put_bucket_lifecycle
            if "encryption" in q:
                return "PutBucketEncryption", bucket_encryption.put_bucket_encryption
            if len(q):
                raise S3Error("NotImplemented",
                              "Bucket configuration is not supported by s3latent.")
            return "CreateBucket", buckets.create_bucket
        if method == "HEAD":
            return "HeadBucket", buckets.head_bucket
        if method == "DELETE":
            if "tagging" in q:
                return "DeleteBucketTagging", buckets.delete_bucket_tagging
            if "policy" in q:
                return "DeleteBucketPolicy", bucket_policy.delete_bucket_policy
            if "cors" in q:
                return "DeleteBucketCors", cors.delete_bucket_cors
            if "lifecycle" in q:
                return "DeleteBucketLifecycle", lifecycle.delete_bucket_lifecycle
            if "encryption" in q:
                return "DeleteBucketEncryption", bucket_encryption.delete_bucket_encryption
            if "publicAccessBlock" in q:
                return "DeletePublicAccessBlock", acl.delete_public_access_block
            if len(q):
                raise S3Error("NotImplemented",
                              "Bucket configuration is not supported by s3latent.")
            return "DeleteBucket", buckets.delete_bucket
        if method == "POST":
            if "delete" in q:
                return "DeleteObjects", objects.delete_objects
            raise S3Error("InvalidArgument", "POST to a bucket must be a multipart/form-data "
                          "upload (POST Object) or ?delete.")
        raise S3Error("MethodNotAllowed", Method=method, ResourceType="BUCKET")

    if method in ("GET", "HEAD"):
        if "uploadId" in q and method == "GET":
            return "ListParts", multipart.list_parts
        if "tagging" in q and method == "GET":
            return "GetObjectTagging", objects.get_object_tagging
        if "acl" in q and method == "GET":
            return "GetObjectAcl", acl.get_object_acl
        if "attributes" in q and method == "GET":
            return "GetObjectAttributes", objects.get_object_attributes
        if "retention" in q and method == "GET":
            return "GetObjectRetention", object_lock.get_object_retention
        if "legal-hold" in q and method == "GET":
            return "GetObjectLegalHold", object_lock.get_object_legal_hold
        return ("GetObject" if method == "GET" else "HeadObject"), objects.get_object
    if method == "PUT":
        if "tagging" in q:
            return "PutObjectTagging", objects.put_object_tagging
        if "retention" in q:
            return "PutObjectRetention", object_lock.put_object_retention
        if "legal-hold" in q:
            return "PutObjectLegalHold", object_lock.put_object_legal_hold
        if "acl" in q:
            return "PutObjectAcl", acl.put_object_acl
        if "partNumber" in q or "uploadId" in q:
            if "x-amz-copy-source" in req.headers:
                return "UploadPartCopy", multipart.upload_part
            return "UploadPart", multipart.upload_part
        if "x-amz-copy-source" in req.headers:
            return "CopyObject", objects.copy_object
        return "PutObject", objects.put_object
    if method == "DELETE":
        if "tagging" in q:
            return "DeleteObjectTagging", objects.delete_object_tagging
        if "uploadId" in q:
            return "AbortMultipartUpload", multipart.abort_multipart_upload
        return "DeleteObject", objects.delete_object
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload", multipart.create_multipart_upload
        if "uploadId" in q:
            return "CompleteMultipartUpload", multipart.complete_multipart_upload
        raise S3Error("NotImplemented", "This POST operation is not supported.")
    raise S3Error("MethodNotAllowed", Method=method, ResourceType="OBJECT")


def error_response(exc: S3Error, request_id: str, node_id: str, *, head: bool,
                   resource: str | None) -> web.Response:
    headers = {"x-amz-request-id": request_id, "x-amz-id-2": node_id, **exc.headers}
    if exc.status == 304:
        return web.Response(status=304, headers=headers)
    body: dict[str, Any] = {"Code": exc.code, "Message": exc.message}
    body.update(exc.extra)
    body["Resource"] = exc.resource or resource
    body["RequestId"] = request_id
    body["HostId"] = node_id
    if exc.status == 503:
        headers.setdefault("Retry-After", "1")
    if head:
        # HEAD responses carry no body; clients read the status (and this header).
        headers["x-amz-error-code"] = exc.code
        return web.Response(status=exc.status, headers=headers)
    return web.Response(
        status=exc.status,
        body=xml.render("Error", body, namespace=False),
        content_type="application/xml",
        headers=headers,
    )


def _is_internal_endpoint(request: web.Request) -> bool:
    """/metrics and /health answer unsigned GETs; signed ones are S3 bucket requests."""
    if request.method != "GET" or request.path not in ("/metrics", "/health"):
        return False
    return "Authorization" not in request.headers and "X-Amz-Signature" not in request.query


def make_app(gw: Gateway) -> web.Application:
    """The aiohttp application serving S3 on `gw`'s backend."""

    async def handle(request: web.Request) -> web.StreamResponse:
        gw.in_flight += 1
        try:
            return await _handle(request)
        finally:
            gw.in_flight -= 1
            if gw.leaving and gw.in_flight == 0:
                gw.drained.set()

    async def _handle(request: web.Request) -> web.StreamResponse:
        request_id = secrets.token_hex(8).upper()
        request["request_id"] = request_id
        started = time.perf_counter()
        operation = "Unknown"
        resource = None
        deny_missing = False  # access.authorize: a missing key is not the caller's to know
        try:
            bucket, key, raw_path = split_target(
                request.raw_path, request.headers.get("Host"), gw.config.domain
            )
            resource = f"/{bucket}/{key}" if key else (f"/{bucket}" if bucket else "/")
            if peer.is_peer_request(gw, request.raw_path):
                # Before S3 authentication: only the cluster's signature opens these.
                operation, answer = await peer.dispatch(gw, request)
                if isinstance(answer, S3Request):  # a read forwarded by a peer: serve it
                    request_id, resource = answer.request_id, answer.resource
                    assert answer.bucket is not None
                    check_bucket_name(answer.bucket)
                    _refuse_internal_bucket(gw, answer.bucket, creating=False)
                    operation, handler = route(answer)
                    if operation not in peer.FORWARDABLE:
                        raise S3Error("AccessDenied", "Peers forward only GET and HEAD.")
                    response = await handler(gw, answer)
                else:
                    response = answer
            elif _is_internal_endpoint(request):
                operation = request.path.lstrip("/")
                response = await _internal(gw, request.path)
            elif request.method == "OPTIONS":
                operation = "PreflightCors"  # unsigned, as browsers send it
                response = await cors.preflight(gw, request, bucket, key)
            elif bucket is not None and post_object.is_post_object(request, bucket, key):
                operation = "PostObject"
                cors.note_bucket(gw, request, bucket)
                check_bucket_name(bucket)
                _refuse_internal_bucket(gw, bucket, creating=False)
                response = await post_object.post_object(gw, request, bucket, request_id)
            else:
                if bucket is not None:  # before authentication: refusals get Access-Control-*
                    cors.note_bucket(gw, request, bucket)
                refuse_insecure_sse_c(request.headers, gw.proxies.of(request).secure,
                                      gw.config.encryption.sse_c_require_tls)
                raw_query = request.rel_url.raw_query_string
                skew = timedelta(seconds=gw.config.max_skew_s)
                names = {unquote(p.partition("=")[0]) for p in raw_query.split("&") if p}
                if access.is_anonymous_request(request.headers, names):
                    # Evaluated, not refused: ACLs and policies may open it (access.py).
                    auth = access.anonymous_auth(request.headers)
                elif is_sigv2(request.headers, names):
                    auth = authenticate_v2(request.method, raw_path, raw_query, request.headers,
                                           gw.config.users, now=datetime.now(UTC),
                                           max_skew=skew)
                else:
                    auth = authenticate(request.method, raw_path, raw_query, request.headers,
                                        gw.config.users, max_skew=skew)
                if bucket is not None:
                    check_bucket_name(bucket)
                    _refuse_internal_bucket(gw, bucket, creating=request.method == "PUT"
                                            and key is None and not raw_query)
                s3req = S3Request(request, request_id, bucket, key,
                                  parse_query(raw_query), auth)
                operation, handler = route(s3req)
                await access.authorize(gw, s3req, operation)
                deny_missing = s3req.deny_missing
                forwarded = None
                if gw.cluster is not None and operation in peer.FORWARDABLE:
                    assert bucket is not None and key is not None
                    node = gw.cluster.forward_target(bucket, key)
                    if node is not None:
                        if s3req.object_check is not None:
                            # The owner node serves a forwarded read as it comes: decide here.
                            await s3req.check_object(await gw.store.head_object(bucket, key))
                        forwarded = await peer.forward_read(gw, s3req, node)
                if forwarded is None and s3req.object_check is not None and \
                        operation not in access.CHECKED_BY_HANDLER:
                    # Fail closed: an object operation whose handler does not decide with
                    # the object it reads is decided here, before it runs.
                    version = s3req.query.get("versionId")
                    pin = {"version_id": version} if version else {}
                    await s3req.check_object(await gw.store.head_object(bucket, key, **pin))
                response = forwarded or await handler(gw, s3req)
                if operation in ("CreateBucket", "DeleteBucket"):
                    cors.forget(gw, s3req.bucket or "")
        except S3Error as exc:
            if exc.code == "NoSuchKey" and deny_missing:
                exc = S3Error("AccessDenied")
            if exc.code == "InsufficientStorage":
                gw.storage_full.labels(operation).inc()
            response = error_response(exc, request_id, gw.node_id,
                                      head=request.method == "HEAD", resource=resource)
        except UnicodeDecodeError:
            response = error_response(S3Error("InvalidURI"),
                                      request_id, gw.node_id, head=request.method == "HEAD",
                                      resource=resource)
        except (ConnectionError, asyncio.CancelledError):
            gw.requests.labels(operation, "client-gone").inc()
            log.info("%s %s %s client disconnected", request_id, request.method, resource)
            raise
        except Exception:
            log.exception("%s %s %s failed", request_id, request.method, request.path_qs)
            response = error_response(S3Error("InternalError"), request_id, gw.node_id,
                                      head=request.method == "HEAD", resource=resource)
        elapsed = time.perf_counter() - started
        gw.requests.labels(operation, str(response.status)).inc()
        gw.latency.labels(operation).observe(elapsed)
        log.info(  # raw_path: percent-encoded, so keys cannot forge log lines
            "%s %s %s %s %d %.1fms",
            request_id, gw.proxies.of(request).client_ip, operation,
            request.method + " " + request.raw_path,
            response.status, elapsed * 1000,
            extra={"request_id": request_id, "operation": operation,
                   "status": response.status, "ms": round(elapsed * 1000, 2)},
        )
        return response

    async def add_ids(request: web.Request, response: web.StreamResponse) -> None:
        # Also for responses a handler streams (prepared before `handle` returns).
        response.headers.setdefault("x-amz-request-id", request.get("request_id", ""))
        response.headers.setdefault("x-amz-id-2", gw.node_id)
        response.headers["Server"] = "s3latent"
        if gw.leaving:  # shutting down: the client's next request goes to another node
            response.force_close()
        bucket = request.get("cors_bucket")
        if bucket is not None and "Origin" in request.headers:
            await cors.add_response_headers(gw, request, bucket, response.headers)

    app = web.Application(client_max_size=0)
    # Any path, newlines included (S3 keys may contain them).
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle)
    app.on_response_prepare.append(add_ids)

    async def on_startup(_: web.Application) -> None:
        await gw.store.start()
        if gw.cluster is not None:
            await gw.cluster.start()

    async def on_cleanup(_: web.Application) -> None:
        if gw.cluster is not None:
            await gw.cluster.close()
        await gw.store.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app["gateway"] = gw
    return app


def _refuse_internal_bucket(gw: Gateway, bucket: str, *, creating: bool) -> None:
    """The backend's meta bucket (S3 backends) is the gateway's, never a client's."""
    if bucket == gw.store.meta_bucket:
        if creating:
            raise S3Error("BucketAlreadyExists", resource=bucket, BucketName=bucket)
        raise S3Error("AccessDenied", resource=f"/{bucket}")


async def _internal(gw: Gateway, path: str) -> web.Response:
    if path == "/metrics":
        return web.Response(body=generate_latest(gw.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
    if gw.leaving:  # a load balancer stops sending here; peers drop this node
        return web.json_response({"status": "leaving", "backend": gw.store.name}, status=503)
    try:
        await asyncio.wait_for(gw.store.list_buckets(), timeout=5)
    except (S3Error, TimeoutError) as exc:
        return web.json_response({"status": "unhealthy", "backend": gw.store.name,
                                  "error": str(exc)}, status=503)
    if gw.leaving:  # checked after the backend call too: SIGTERM may arrive meanwhile
        return web.json_response({"status": "leaving", "backend": gw.store.name}, status=503)
    return web.json_response({"status": "ok", "backend": gw.store.name})
