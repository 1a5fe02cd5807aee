"""HTTP preconditions and byte ranges, evaluated the way S3 evaluates them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from ..backends.base import ObjectInfo
from ..errors import S3Error
from ..httpdate import format_http_date, parse_http_date

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def etag_matches(header: str, etag: str) -> bool:
    """True when any entity tag in a comma-separated If-(None-)Match list is ours."""
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate.strip('"') == etag:
            return True
    return False


def _modified_since(info: ObjectInfo, when: datetime) -> bool:
    # HTTP dates have one-second resolution.
    return info.last_modified.replace(microsecond=0) > when


def check_preconditions(headers: Mapping[str, str], info: ObjectInfo, *, prefix: str = "") -> None:
    """Raise PreconditionFailed (412) or NotModified (304) as S3 would.

    `prefix` is "x-amz-copy-source-" for CopyObject, whose failures are all 412.
    """
    if_match = headers.get(prefix + "if-match")
    if_none_match = headers.get(prefix + "if-none-match")
    ims_raw = headers.get(prefix + "if-modified-since")
    ius_raw = headers.get(prefix + "if-unmodified-since")
    if if_match is None and if_none_match is None and not ims_raw and not ius_raw:
        return  # the usual GET: nothing to decide (and no validators to format)
    ims = parse_http_date(ims_raw) if ims_raw else None
    ius = parse_http_date(ius_raw) if ius_raw else None
    not_modified = "PreconditionFailed" if prefix else "NotModified"
    # A 304 carries the validators a 200 would have (RFC 9110 15.4.5).
    validators = {} if prefix else {"ETag": f'"{info.etag}"',
                                    "Last-Modified": format_http_date(info.last_modified)}

    if if_match is not None:
        if not etag_matches(if_match, info.etag):
            raise S3Error("PreconditionFailed", Condition=prefix + "If-Match")
    elif ius is not None and _modified_since(info, ius):
        raise S3Error("PreconditionFailed", Condition=prefix + "If-Unmodified-Since")

    if if_none_match is not None:
        if etag_matches(if_none_match, info.etag):
            raise S3Error(not_modified, headers=validators, Condition=prefix + "If-None-Match")
    elif ims is not None and not _modified_since(info, ims):
        raise S3Error(not_modified, headers=validators,
                      Condition=prefix + "If-Modified-Since")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive (first, last) for a single byte range; None means the whole object.

    Syntax S3 does not understand (multiple ranges, other units) is ignored, as
    S3 ignores it; a well-formed but unsatisfiable range is InvalidRange.
    """
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first_s, last_s = m.group(1), m.group(2)
    if first_s:
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
        if last_s and last < first:
            return None
        if first >= size:
            raise _invalid_range(size)
        return first, min(last, size - 1)
    suffix = int(last_s)
    if suffix == 0 or size == 0:
        raise _invalid_range(size)
    return max(0, size - suffix), size - 1


def _invalid_range(size: int) -> S3Error:
    return S3Error(
        "InvalidRange",
        headers={"Content-Range": f"bytes */{size}"},
        ActualObjectSize=str(size),
    )
