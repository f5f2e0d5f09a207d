"""Sliding windows forget old latency, merge like a union, and stay within the error bound."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planty_broker.domain.stats.sketch import LatencySketch
from planty_broker.domain.stats.windowed import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    WEEK_MS,
    WindowedSketch,
    WindowLayout,
)

T0 = 1_764_028_800_000  # a whole day in unix ms: slots of every level start here
QS = (0.5, 0.95, 0.99)


def test_last_hour_forgets_what_is_older_but_the_day_keeps_it() -> None:
    w = WindowedSketch()
    for i in range(100):
        w.add(10.0 + i, T0 + i * 1000)
    now = T0 + 2 * HOUR_MS
    assert w.count(HOUR_MS, now) == 0
    assert w.quantiles(QS, HOUR_MS, now) == (None, None, None)
    assert w.count(DAY_MS, now) == 100
    assert w.count(WEEK_MS, now) == 100
    assert w.count(DAY_MS, T0 + 2 * DAY_MS) == 0
    assert w.count(WEEK_MS, T0 + 8 * DAY_MS) == 0


def test_window_is_whole_slots_the_current_one_and_those_before_it() -> None:
    w = WindowedSketch()
    # one sample per minute for 2 hours, value = minutes since T0
    for minute in range(120):
        w.add(float(minute + 1), T0 + minute * MINUTE_MS)
    now = T0 + 119 * MINUTE_MS + 30_000  # in the slot 115..119
    # "last hour": current 5-minute slot + 11 before it = minutes 60..119
    last_hour = w.window(HOUR_MS, now)
    assert last_hour.count == 60
    assert last_hour.min == 61.0
    assert w.count(5 * MINUTE_MS, now) == 5
    assert w.count(30 * MINUTE_MS, now) == 30
    assert w.count(2 * HOUR_MS, now) == 120  # answered from the hourly level


def test_old_samples_leave_a_window_slot_by_slot() -> None:
    w = WindowedSketch()
    w.add(1000.0, T0)  # one slow sample
    for minute in range(1, 60):
        w.add(10.0, T0 + minute * MINUTE_MS)
    assert w.quantiles((1.0,), HOUR_MS, T0 + 59 * MINUTE_MS) == (1000.0,)
    # once its 5-minute slot has left the last hour, the max is back to 10
    assert w.quantiles((1.0,), HOUR_MS, T0 + 60 * MINUTE_MS) == (10.0,)


def test_a_gap_longer_than_the_ring_leaves_only_new_values() -> None:
    w = WindowedSketch()
    w.add(500.0, T0)
    w.add(5.0, T0 + 30 * DAY_MS)
    for window in (HOUR_MS, DAY_MS, WEEK_MS):
        assert w.window(window, T0 + 30 * DAY_MS).max == 5.0
        assert w.count(window, T0 + 30 * DAY_MS) == 1


def test_a_clock_stepping_back_counts_into_the_current_slot() -> None:
    w = WindowedSketch()
    w.add(5.0, T0 + HOUR_MS)
    w.add(7.0, T0)  # an hour back
    assert w.count(5 * MINUTE_MS, T0 + HOUR_MS) == 2


def test_window_longer_than_the_history_kept_is_refused() -> None:
    w = WindowedSketch()
    with pytest.raises(ValueError, match="longer than"):
        w.count(WEEK_MS + 1, T0)
    with pytest.raises(ValueError, match="positive"):
        w.count(0, T0)


def test_empty_sketch_answers_empty() -> None:
    w = WindowedSketch()
    assert w.is_empty()
    assert w.count(HOUR_MS, T0) == 0
    assert w.window(DAY_MS, T0).count == 0


samples = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=9 * DAY_MS),
        st.floats(min_value=0.5, max_value=60_000.0, allow_nan=False),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(samples, samples, st.integers(min_value=0, max_value=2 * DAY_MS))
def test_merge_of_two_devices_equals_one_sketch_of_both(
    a: list[tuple[int, float]], b: list[tuple[int, float]], after: int
) -> None:
    a.sort()
    b.sort()
    wa, wb, union = WindowedSketch(), WindowedSketch(), WindowedSketch()
    for t, v in a:
        wa.add(v, T0 + t)
    for t, v in b:
        wb.add(v, T0 + t)
    for t, v in sorted(a + b):
        union.add(v, T0 + t)
    wa.merge(wb)
    now = T0 + max((t for t, _ in a + b), default=0) + after
    for window in (5 * MINUTE_MS, HOUR_MS, 6 * HOUR_MS, DAY_MS, WEEK_MS):
        assert wa.count(window, now) == union.count(window, now)
        assert wa.quantiles(QS, window, now) == union.quantiles(QS, window, now)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=30_000.0, allow_nan=False), min_size=1))
def test_window_quantiles_are_nearest_rank_within_the_bucket_width(values: list[float]) -> None:
    w = WindowedSketch()
    for i, v in enumerate(values):
        w.add(v, T0 + i * 1000)
    now = T0 + len(values) * 1000
    ordered = sorted(values)
    got = w.quantiles(QS, DAY_MS, now)
    for q, estimate in zip(QS, got, strict=True):
        truth = ordered[max(1, math.ceil(Fraction(str(q)) * len(ordered))) - 1]
        assert estimate is not None
        assert truth <= estimate <= truth * (1.01 / 0.99) * (1 + 1e-9)


def test_fleet_figure_from_merged_device_windows() -> None:
    devices = [WindowedSketch() for _ in range(3)]
    for n, w in enumerate(devices):
        for i in range(50):
            w.add(10.0 * (n + 1), T0 + i * MINUTE_MS)
    fleet = LatencySketch()
    for w in devices:
        fleet.merge(w.window(HOUR_MS, T0 + 50 * MINUTE_MS))
    assert fleet.count == sum(w.count(HOUR_MS, T0 + 50 * MINUTE_MS) for w in devices)
    assert fleet.quantile(1.0) == 30.0


def test_merging_different_layouts_is_refused() -> None:
    other = WindowedSketch(WindowLayout(levels=((MINUTE_MS, 60),)))
    with pytest.raises(ValueError, match="different layouts"):
        WindowedSketch().merge(other)


def test_layout_levels_must_grow() -> None:
    with pytest.raises(ValueError, match="finest first"):
        WindowLayout(levels=((HOUR_MS, 24), (MINUTE_MS, 5)))
