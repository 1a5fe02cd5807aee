"""SigV4 primitives shared by the side that verifies signatures and the side that makes them.

The S3 front end verifies what clients sign (s3api.auth, s3api.payload); the S3 backend's data
path signs its own requests to the backend (backends.s3_datapath). Both need the same key
derivation and HMAC, and neither side may import the other, so the primitives live here.
"""

from __future__ import annotations

import hmac
from functools import lru_cache

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TERMINAL = "aws4_request"


@lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """kSigning for a (secret, date, region); cached because it only changes daily."""
    key = hmac.digest(("AWS4" + secret).encode("utf-8"), date.encode("utf-8"), "sha256")
    key = hmac.digest(key, region.encode("utf-8"), "sha256")
    key = hmac.digest(key, service.encode("utf-8"), "sha256")
    return hmac.digest(key, TERMINAL.encode("utf-8"), "sha256")


def sign_hex(key: bytes, string_to_sign: str) -> str:
    """Hex HMAC-SHA256, the form every SigV4 signature takes."""
    return hmac.new(key, string_to_sign.encode("utf-8"), "sha256").hexdigest()


def signatures_equal(expected: str, provided: str) -> bool:
    """Constant-time comparison of two hex signatures (case-insensitive)."""
    return hmac.compare_digest(
        expected.encode("ascii"), provided.lower().encode("ascii", "replace")
    )
