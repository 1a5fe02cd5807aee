"""Bucket and key naming rules, as S3 enforces them."""

from __future__ import annotations

import ipaddress
import re

from .errors import S3Error

MAX_KEY_BYTES = 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_bucket_name(name: str) -> None:
    """General-purpose bucket rules: 3-63 chars, lowercase, digits, '.', '-'."""
    ok = bool(_BUCKET_RE.match(name)) and ".." not in name and ".-" not in name
    ok = ok and "-." not in name and not name.startswith("xn--")
    ok = ok and not name.endswith(("-s3alias", "--ol-s3"))
    if ok:
        try:
            ipaddress.IPv4Address(name)
            ok = False
        except ValueError:
            pass
    if not ok:
        raise S3Error("InvalidBucketName", resource=name, BucketName=name)


def check_key(key: str) -> None:
    if not key:
        raise S3Error("InvalidArgument", "Object key must not be empty.")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise S3Error("InvalidArgument", "Object key is not valid UTF-8.") from exc
    if size > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", Size=str(size), MaxSizeAllowed=str(MAX_KEY_BYTES))
