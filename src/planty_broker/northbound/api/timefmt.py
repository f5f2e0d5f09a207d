"""Time on the API: ISO 8601 UTC out; ISO 8601 or unix milliseconds in."""

from __future__ import annotations

from datetime import UTC, datetime

from planty_broker.northbound.api.limits import TIME_MAX_MS, TIME_MIN_MS


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


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
