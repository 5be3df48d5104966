"""VTEX duration strings such as lockTTL `8d`."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^\s*(\d{1,6})\s*(bd|d|h|m|s)\s*$")
_UNIT_SECONDS = {"bd": 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: str) -> timedelta:
    """Parse `8d`, `12h`, `30m`, `45s` (and VTEX's business days `3bd`, counted as days).

    Raises:
        ValueError: the text is not such a duration.
    """
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration like 8d, 12h, 30m or 45s")
    amount, unit = match.groups()
    return timedelta(seconds=int(amount) * _UNIT_SECONDS[unit])
