"""httpdate: the direct IMF-fixdate path answers exactly what email.utils answers."""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime, timedelta, timezone

from s3latent.httpdate import format_http_date, parse_http_date


def _reference_parse(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _dates(n: int) -> list[datetime]:
    rng = random.Random(14)
    start = datetime(1970, 1, 1, tzinfo=UTC)
    return [start + timedelta(seconds=rng.randrange(0, 200 * 365 * 86400),
                              microseconds=rng.randrange(0, 10**6)) for _ in range(n)]


def test_format_is_email_utils_imf_fixdate() -> None:
    for d in [*_dates(3000), datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)]:
        assert format_http_date(d) == email.utils.format_datetime(d, usegmt=True)
    east = datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert format_http_date(east) == "Wed, 31 Dec 2025 22:30:00 GMT"


def test_parse_matches_email_utils_on_fixdates_and_near_misses() -> None:
    rng = random.Random(4)
    values = [email.utils.format_datetime(d, usegmt=True) for d in _dates(2000)]
    variants = []
    for v in values[:300]:
        i = rng.randrange(len(v))
        variants.append(v[:i] + rng.choice("0 9:,xZ+-") + v[i + 1:])  # one char changed
        variants.append(v.lower())
        variants.append(v.replace("GMT", "+0200"))
        variants.append("Xyz" + v[3:])
    variants += [
        "Sun, 31 Feb 2026 10:00:00 GMT",  # no such day
        "Sun, 06 Nov 1994 08:49:60 GMT",  # second 60
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT ",
        "Sun, \u06606 Nov 1994 08:49:37 GMT",  # a non-ASCII digit
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850
        "Sun Nov  6 08:49:37 1994",  # asctime
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "",
        "garbage",
    ]
    for v in values + variants:
        assert parse_http_date(v) == _reference_parse(v) if v else parse_http_date(v) is None, v
        parsed = parse_http_date(v)
        if parsed is not None:
            assert parsed.tzinfo == UTC
    assert parse_http_date(None) is None
