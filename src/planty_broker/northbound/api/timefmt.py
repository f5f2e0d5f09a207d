"""Time on the API: ISO 8601 UTC out; ISO 8601 or unix milliseconds in."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from planty_broker.northbound.api.limits import TIME_MAX_MS, TIME_MIN_MS


def iso(ms: int | None) -> str | None:
    """`2026-12-04T09:40:01.123Z`. The date and time of the second are formatted once per
    second (a command's answer holds six times, issue 17's profile at 1,000 commands/s)."""
    if ms is None:
        return None
    seconds, milli = divmod(ms, 1000)
    return f"{_second(seconds)}.{milli:03d}Z"


@functools.lru_cache(maxsize=256)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None).isoformat()


def parse_time(value: str | None, name: str) -> int | None:
    """Parse a query time; raises ValueError naming the parameter."""
    if value is None or value == "":
        return None
    if value.lstrip("-").isdigit():
        ms = int(value) if len(value) <= 20 else TIME_MAX_MS + 1
        if not TIME_MIN_MS <= ms <= TIME_MAX_MS:
            raise ValueError(f"{name}: unix milliseconds out of range, got {value[:24]!r}")
        return ms
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{name}: expected ISO 8601 time or unix milliseconds, got {value!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)
