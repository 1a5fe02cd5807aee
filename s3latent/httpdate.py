"""HTTP dates (RFC 7231 IMF-fixdate and the obsolete forms) as S3 and its clients send them.

One parser for every place a date arrives in a header: conditional requests, SigV2/SigV4
`Date`, the backend's Last-Modified. Always timezone-aware UTC, or None when unreadable, so
callers decide what an unreadable date means for them.

Every GET parses the backend's Last-Modified and formats its own, so the one form servers
send (IMF-fixdate, fixed width) is read and written directly; everything else goes through
`email.utils`, whose answer is the reference: the direct path only ever returns what
`email.utils` would (tests/test_httpdate.py).
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name: i for i, name in enumerate(_MONTHS, 1)}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DIGITS = frozenset("0123456789")


def _fixdate(value: str) -> datetime | None:
    """`Sun, 06 Nov 1994 08:49:37 GMT` read by position; None for anything else."""
    if len(value) != 29 or value[3:5] != ", " or not value.endswith(" GMT"):
        return None
    if value[7] != " " or value[11] != " " or value[16] != " " or value[19] != ":" \
            or value[22] != ":" or value[0:3] not in _DAYS:
        return None
    month = _MONTH_NUMBER.get(value[8:11])
    numbers = value[5:7] + value[12:16] + value[17:19] + value[20:22] + value[23:25]
    if month is None or not _DIGITS.issuperset(numbers):
        return None
    year = int(value[12:16])
    if year < 100:  # email.utils reads these as two-digit years
        return None
    try:
        return datetime(year, month, int(value[5:7]), int(value[17:19]),
                        int(value[20:22]), int(value[23:25]), tzinfo=UTC)
    except ValueError:  # e.g. 31 Feb or second 60: the reference path decides
        return None


def parse_http_date(value: str | None) -> datetime | None:
    """Aware UTC datetime, or None for a missing or unreadable date."""
    if not value:
        return None
    fixed = _fixdate(value)
    if fixed is not None:
        return fixed
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_http_date(value: datetime) -> str:
    """IMF-fixdate in GMT, the form S3 sends in Last-Modified."""
    t = value.astimezone(UTC)
    return (f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT")
