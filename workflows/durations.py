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
    if unit != "bd":
        return start + timedelta(seconds=amount * _UNIT_SECONDS[unit])
    end = start
    while amount > 0:
        end += timedelta(days=1)
        if end.weekday() < 5:
            amount -= 1
    return end
