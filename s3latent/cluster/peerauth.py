"""Peer requests signed with the cluster secret (HMAC-SHA256); client credentials never count.

The signature covers the method, the raw path and query, a timestamp, the sender's node URL,
the client's access key and request id a forwarded read carries, and the body's SHA-256, so a
peer request cannot be altered, and a captured one stops working after `MAX_SKEW_S`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "/_s3latent/peer/"
MAX_SKEW_S = 30.0
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

H_NODE = "x-s3latent-peer-node"
H_DATE = "x-s3latent-peer-date"
H_ACCESS_KEY = "x-s3latent-peer-access-key"
H_REQUEST_ID = "x-s3latent-peer-request-id"
H_BODY = "x-s3latent-peer-body-sha256"
H_SIGNATURE = "x-s3latent-peer-signature"
HEADERS = (H_NODE, H_DATE, H_ACCESS_KEY, H_REQUEST_ID, H_BODY, H_SIGNATURE)


class PeerAuthError(Exception):
    """The request is not from a peer: missing, invalid or expired signature."""


@dataclass(frozen=True)
class PeerIdentity:
    """What a verified peer request says about itself."""

    node: str
    access_key: str
    request_id: str
    body_sha256: str


def _string_to_sign(method: str, path_qs: str, date: str, node: str, access_key: str,
                    request_id: str, body_sha256: str) -> bytes:
    return "\n".join(("S3LATENT-PEER-1", method.upper(), path_qs, date, node, access_key,
                      request_id, body_sha256)).encode("utf-8", "surrogatepass")


def sign(secret: str, method: str, path_qs: str, node: str, *, body: bytes = b"",
         access_key: str = "", request_id: str = "", now: float | None = None
         ) -> dict[str, str]:
    """The headers that make a request to `path_qs` (raw, as sent) a signed peer request."""
    date = str(int(time.time() if now is None else now))
    body_sha256 = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
    mac = hmac.new(secret.encode(), _string_to_sign(method, path_qs, date, node, access_key,
                                                    request_id, body_sha256), hashlib.sha256)
    return {H_NODE: node, H_DATE: date, H_ACCESS_KEY: access_key, H_REQUEST_ID: request_id,
            H_BODY: body_sha256, H_SIGNATURE: mac.hexdigest()}


def verify(secret: str, method: str, path_qs: str, headers: Mapping[str, str], *,
           now: float | None = None) -> PeerIdentity:
    """The sender's identity, or PeerAuthError. The body hash is the caller's to check."""
    if not secret:
        raise PeerAuthError("this node is not in a cluster")
    values = {name: headers.get(name) for name in HEADERS}
    missing = [name for name in (H_NODE, H_DATE, H_BODY, H_SIGNATURE) if not values[name]]
    if missing:
        raise PeerAuthError(f"missing {', '.join(missing)}")
    try:
        date = int(values[H_DATE] or "")
    except ValueError as exc:
        raise PeerAuthError("bad date") from exc
    current = time.time() if now is None else now
    if abs(current - date) > MAX_SKEW_S:
        raise PeerAuthError("signature expired")
    node, body_sha256 = values[H_NODE] or "", values[H_BODY] or ""
    access_key, request_id = values[H_ACCESS_KEY] or "", values[H_REQUEST_ID] or ""
    expected = hmac.new(secret.encode(), _string_to_sign(
        method, path_qs, str(date), node, access_key, request_id, body_sha256),
        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, values[H_SIGNATURE] or ""):
        raise PeerAuthError("signature does not match")
    return PeerIdentity(node, access_key, request_id, body_sha256)


def check_body(identity: PeerIdentity, body: bytes) -> None:
    """The body is the one that was signed."""
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), identity.body_sha256):
        raise PeerAuthError("body does not match its signed hash")
