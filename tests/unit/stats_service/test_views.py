"""Per-slot latency series (chart data) and the store-write histogram."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from planty_broker.domain.stats.windowed import DAY_MS, HOUR_MS, MINUTE_MS, WindowedSketch
from planty_broker.services.ingest import store_write_histogram
from planty_broker.services.stats.views import latency_series

T0 = 1_764_028_800_000  # aligned on a day


def exact(values: list[float], q: float) -> float:
    """Nearest rank: the sample of rank ceil(q n)."""
    s = sorted(values)
    return s[max(1, math.ceil(Fraction(str(q)) * len(s))) - 1]


def test_series_has_one_point_per_non_empty_slot_within_the_error_bound() -> None:
    rng = random.Random(7)
    ws = WindowedSketch()
    per_slot: dict[int, list[float]] = {}
    for slot in (0, 1, 4, 11):  # 5-minute slots of the last hour; 2, 3, 5..10 stay empty
        start = T0 + slot * 5 * MINUTE_MS
        values = [rng.lognormvariate(3.5, 0.6) for _ in range(200)]
        per_slot[start] = values
        for i, v in enumerate(values):
            ws.add(v, start + i * 1000)
    now = T0 + 12 * 5 * MINUTE_MS - 1
    series = latency_series(ws, HOUR_MS, now)
    assert [p["t_ms"] for p in series] == sorted(per_slot)
    for point in series:
        values = per_slot[point["t_ms"]]
        assert point["count"] == 200 and point["slot_ms"] == 5 * MINUTE_MS
        assert point["max_ms"] == max(values)
        for q, key in ((0.5, "p50_ms"), (0.99, "p99_ms")):
            truth = exact(values, q)
            assert truth <= point[key] <= truth * 1.01 / 0.99 * (1 + 1e-9)
    # a day window uses hour slots: the four 5-minute slots fold into one point
    day = latency_series(ws, DAY_MS, now)
    assert len(day) == 1 and day[0]["count"] == 800 and day[0]["slot_ms"] == HOUR_MS


def test_empty_sketch_has_no_series() -> None:
    assert latency_series(WindowedSketch(), HOUR_MS, T0) == []


def test_duration_histogram_is_cumulative() -> None:
    h = store_write_histogram((0.01, 0.1))
    for s in (0.005, 0.01, 0.05, 3.0):
        h.observe(s)
    (family,) = h.collect()
    buckets = [
        (x.labels["le"], x.value) for x in family.samples if x.name.endswith("_bucket")
    ]
    values = {x.name: x.value for x in family.samples if not x.name.endswith("_bucket")}
    assert buckets == [("0.01", 2), ("0.1", 3), ("+Inf", 4)]
    assert values["planty_store_write_seconds_count"] == 4
    assert values["planty_store_write_seconds_sum"] == pytest.approx(3.065)
