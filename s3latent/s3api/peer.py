"""The cluster's HTTP side: peer endpoints under /_s3latent/peer/, and forwarded reads.

Peer endpoints answer only requests signed with the cluster secret (cluster.peerauth); client
credentials count for nothing there (403 AccessDenied). They are reached before S3
authentication, recognised by the raw path whatever the Host header says: "_s3latent" is no
valid bucket name, so no path-style client bucket hides behind the prefix. A forwarded read
is served by the normal S3 handler, as it would be for the client, under the receiving node's
request id.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ..cluster import peerauth
from ..cluster.node import DEPTH_HEADER, PeerUnavailable, md5_hex
from ..errors import S3Error
from .auth import AuthContext
from .gateway import Gateway
from .request import S3Request, parse_query

log = logging.getLogger("s3latent.cluster")

FORWARDABLE = ("GetObject", "HeadObject")
_REQUEST_ID = re.compile(r"^[0-9A-Za-z]{1,64}$")
# Response headers of the owner that are not passed on: framing (set again here) and this
# node's identity (the client talks to it; its request id stays the receiving node's).
_RESPONSE_DROP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                            "server", "date", "x-amz-request-id", "x-amz-id-2"})
_CHUNK = 256 * 1024


def is_peer_request(gw: Gateway, raw_path: str) -> bool:
    """Whether a request is for the peer endpoints (only when this node is in a cluster).

    Judged on the raw path, whatever the Host header: with a `domain`, node host names under
    it would otherwise read as virtual-host bucket requests and the fleet never forms.
    """
    return gw.cluster is not None and raw_path.startswith(peerauth.PREFIX)


async def dispatch(gw: Gateway, request: web.Request
                   ) -> tuple[str, web.StreamResponse | S3Request]:
    """(operation, response), or (operation, S3Request) of a forwarded read to serve."""
    cluster = gw.cluster
    assert cluster is not None
    try:
        ident = peerauth.verify(cluster.settings.secret, request.method, request.raw_path,
                                request.headers)
        body = b""
        if request.method == "POST":
            body = await request.read()
            peerauth.check_body(ident, body)
    except peerauth.PeerAuthError as exc:
        log.warning("peer request %s %s refused: %s", request.method, request.raw_path[:200],
                    exc)
        raise S3Error("AccessDenied", "Peer requests need the cluster's signature.") from exc
    path, _, raw_query = request.raw_path.partition("?")
    what = path[len(peerauth.PREFIX):]
    query = parse_query(raw_query)
    if what == "health" and request.method == "GET":
        return "PeerHealth", web.json_response(cluster.health())
    if what.startswith("object/") and request.method in ("GET", "HEAD"):
        bucket, _, key = what[len("object/"):].partition("/")
        bucket, key = unquote(bucket, errors="strict"), unquote(key, errors="strict")
        if not bucket or not key:
            raise S3Error("InvalidRequest", "A forwarded read names a bucket and a key.")
        if _REQUEST_ID.match(ident.request_id):
            request["request_id"] = ident.request_id
        cluster.forwarded_in.inc()
        auth = AuthContext(access_key=ident.access_key, content_sha256="UNSIGNED-PAYLOAD",
                           signing_key=b"", seed_signature="", amz_date="",
                           credential_scope="", presigned=False)
        return "PeerRead", S3Request(request, request["request_id"], bucket, key, query, auth)
    if request.method == "POST" and what in ("invalidate", "render") and \
            not ("bucket" in query and "key" in query):
        raise S3Error("InvalidRequest", "bucket and key are required.")
    if request.method == "POST" and what == "invalidate":
        cluster.invalidated(query["bucket"], query["key"])
        return "PeerInvalidate", web.Response(status=200)
    if request.method == "POST" and what == "leave":
        cluster.peer_left(ident.node)
        return "PeerLeave", web.Response(status=200)
    if request.method == "POST" and what == "render":
        data = await cluster.render_for_peer(query["bucket"], query["key"],
                                             query.get("etag", ""), body)
        return "PeerRender", web.Response(body=data, headers={
            "Content-Type": "application/octet-stream", "x-s3latent-render-md5": md5_hex(data),
            DEPTH_HEADER: str(cluster.depth())})
    raise S3Error("InvalidRequest", "Unknown peer request.")


async def forward_read(gw: Gateway, req: S3Request, node: str) -> web.StreamResponse | None:
    """Stream the owner's answer to a GET/HEAD through; None: the owner is out of reach, so
    serve it here (the peer is marked suspect and the fallback counted)."""
    cluster = gw.cluster
    assert cluster is not None and req.bucket is not None and req.key is not None
    try:
        upstream = await cluster.forward(
            node, req.method, req.bucket, req.key, req.http.rel_url.raw_query_string,
            req.headers, access_key=req.auth.access_key, request_id=req.request_id)
    except PeerUnavailable as exc:
        log.warning("%s forward of %s to %s failed, serving here: %s", req.request_id,
                    req.resource, node, exc)
        return None
    try:
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in _RESPONSE_DROP)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=headers)
        length = upstream.content_length
        if req.method == "HEAD" or upstream.status in (204, 304):
            if length is not None and upstream.status not in (204, 304):
                response.content_length = length
            await response.prepare(req.http)
            await response.write_eof()
            cluster.forwarded.labels("ok").inc()
            return response
        if length is not None:
            response.content_length = length
        await response.prepare(req.http)
        sent = 0
        try:
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                sent += len(chunk)
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s owner %s failed after %d bytes of %s: %r", req.request_id, node,
                        sent, req.resource, exc)
        if length is not None and sent != length:
            # Never pretend a short body is complete: the connection must not be reused.
            log.error("%s owner %s sent %d of %d bytes for %s", req.request_id, node, sent,
                      length, req.resource)
            if req.http.transport is not None:
                req.http.transport.close()
            return response
        await response.write_eof()
        cluster.forwarded.labels("ok").inc()
        return response
    finally:
        cluster.forward_done(upstream)
