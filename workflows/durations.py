"""VTEX duration strings such as lockTTL `8d`."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_DURATION = re.compile(r"^\s*(\d{1,6})\s*(bd|d|h|m|s)\s*$")
_UNIT_SECONDS = {"bd": 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: str) -> timedelta:
    """Parse `8d`, `12h`, `30m`, `45s` (and VTEX's business days `3bd`, counted as days here;
    `lock_deadline` counts them as business days from a start).

    Raises:
        ValueError: the text is not such a duration.
    """
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration like 8d, 12h, 30m or 45s")
    amount, unit = match.groups()
    return timedelta(seconds=int(amount) * _UNIT_SECONDS[unit])


def lock_deadline(value: str, start: datetime) -> datetime:
    """When a duration like lockTTL `8d` or `3bd` that starts at `start` ends.

    Business days (`bd`) skip Saturdays and Sundays: `1bd` from a Friday noon ends on Monday noon.
    Holidays are not known here and count as business days.

    Raises:
        ValueError: the text is not such a duration.
    """
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration like 8d, 12h, 30m or 45s")
    amount, unit = int(match[1]), match[2]
    if unit != "bd" or amount == 0:
        return start + timedelta(seconds=amount * _UNIT_SECONDS[unit])
    # Every 7 days hold 5 business days and end on the weekday they start on: skip the whole
    # weeks at once, then walk the last 1 to 5 business days (at most 7 days). The same end as
    # walking day by day, in constant time whatever the amount.
    weeks, rest = divmod(amount - 1, 5)
    end, rest = start + timedelta(weeks=weeks), rest + 1
    while rest > 0:
        end += timedelta(days=1)
        if end.weekday() < 5:
            rest -= 1
    return end


# The longest lock a placement may ask for: a year, or a year of business days (52 weeks of 5,
# at most 364 calendar days from any start, so the bound does not depend on the day it is
# checked). A marketplace holds an unpaid order for days; stock held longer is held for an order
# it has given up on.
MAX_LOCK = timedelta(days=365)
MAX_LOCK_BUSINESS_DAYS = 52 * 5


def check_lock_ttl(value: str) -> None:
    """Check a lockTTL such as `8d` or `3bd`: a duration, and no longer than the longest lock.

    Raises:
        ValueError: the text is not such a duration, or it is longer.
    """
    match = _DURATION.match(value)
    if match and match[2] == "bd" and int(match[1]) > MAX_LOCK_BUSINESS_DAYS:
        raise ValueError(f"{value!r} is over {MAX_LOCK_BUSINESS_DAYS} business days")
    if parse_duration(value) > MAX_LOCK:
        raise ValueError(f"{value!r} is over {MAX_LOCK.days} days")
