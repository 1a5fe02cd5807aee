"""Bucket and key naming rules, as S3 enforces them."""

from __future__ import annotations

import ipaddress
import re

from ..errors import S3Error
from .xml import XML_INVALID

MAX_KEY_BYTES = 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")  # the only names an IPv4 address can be


def check_bucket_name(name: str) -> None:
    """General-purpose bucket rules: 3-63 chars, lowercase, digits, '.', '-'."""
    ok = bool(_BUCKET_RE.match(name)) and ".." not in name and ".-" not in name
    ok = ok and "-." not in name and not name.startswith("xn--")
    ok = ok and not name.endswith(("-s3alias", "--ol-s3"))
    if ok and _DIGITS_AND_DOTS.fullmatch(name):  # every request checks: skip the parse
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


def check_new_key(key: str) -> None:
    """The rules for a key being written: S3's, plus those that keep keys distinct.

    Storage backends that map keys to file paths (SeaweedFS's filer, most
    file-system stores) merge `a//b` into `a/b` and resolve `.` and `..`
    segments, so two client keys would land on one stored object; such keys
    are refused on every backend, so a bucket's keys never depend on where it
    is stored. Keys with characters XML 1.0 cannot carry are refused too
    (docs/s3-compat.md, "Key rules"). Reads and deletes accept any key.
    """
    check_key(key)
    if XML_INVALID.search(key):
        raise S3Error("InvalidArgument", "Object keys may not contain characters that "
                      "XML 1.0 cannot represent (control characters other than tab, "
                      "newline and carriage return, U+FFFE, U+FFFF).",
                      ArgumentName="key")
    segments = key.split("/")
    for i, segment in enumerate(segments):
        if segment in (".", ".."):
            raise S3Error("InvalidArgument", "Object keys may not contain '.' or '..' "
                          "path segments.", ArgumentName="key", ArgumentValue=key)
        if not segment and i < len(segments) - 1:
            raise S3Error("InvalidArgument", "Object keys may not start with '/' or "
                          "contain '//' (empty path segments).", ArgumentName="key",
                          ArgumentValue=key)
