"""HTTP dates (RFC 7231 IMF-fixdate and the obsolete forms) as S3 and its clients send them.

One parser for every place a date arrives in a header: conditional requests, SigV2/SigV4
`Date`, the backend's Last-Modified. Always timezone-aware UTC, or None when unreadable, so
callers decide what an unreadable date means for them.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime


def parse_http_date(value: str | None) -> datetime | None:
    """Aware UTC datetime, or None for a missing or unreadable date."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_http_date(value: datetime) -> str:
    """IMF-fixdate in GMT, the form S3 sends in Last-Modified."""
    return email.utils.format_datetime(value.astimezone(UTC), usegmt=True)
