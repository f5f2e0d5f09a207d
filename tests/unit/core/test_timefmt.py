"""Times on the API: `iso` formats milliseconds exactly, whatever second they fall in."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from planty_broker.northbound.api.limits import TIME_MAX_MS, TIME_MIN_MS
from planty_broker.northbound.api.timefmt import iso, parse_time


def exact(ms: int) -> str:
    """The reference: integer arithmetic, no float division."""
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return f"{dt.year:04d}" + dt.strftime("-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def test_iso_is_exact_over_the_whole_api_range() -> None:
    rng = random.Random(17)
    edges = [0, 1, 999, 1000, -1, -999, -1000, -1001, TIME_MIN_MS, TIME_MAX_MS]
    for ms in edges + [rng.randint(TIME_MIN_MS, TIME_MAX_MS) for _ in range(20_000)]:
        assert iso(ms) == exact(ms), ms
    assert iso(None) is None
    assert iso(1_733_305_201_123) == "2024-12-04T09:40:01.123Z"
    assert iso(TIME_MAX_MS) == "9999-12-31T23:59:59.999Z"  # float division said .998


def test_iso_round_trips_through_parse_time() -> None:
    for ms in (0, 1_733_305_201_123, TIME_MAX_MS, TIME_MIN_MS):
        text = iso(ms)
        assert text is not None and parse_time(text, "t") == ms
