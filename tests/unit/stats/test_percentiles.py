"""Every percentile the API serves, against exact nearest-rank quantiles.

With n samples the reported pq must never be below the value that more than
(1 - q) n samples reach or exceed (the sample of rank ceil(q n)), and never more
than one bucket width (gamma = 1.01 / 0.99) above it. Checked on small samples
(where p99 is the maximum), on large ones, and with outliers, through the same
functions that build the API's answers: `latency_summary` (/latency, /stats),
`latency_series` (per-slot chart points) and the Prometheus summary's quantiles.
Times are fixed unix-ms constants: nothing here reads the clock.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from planty_broker.domain.stats.counters import DEFAULT_QUANTILES, latency_summary
from planty_broker.domain.stats.windowed import HOUR_MS, MINUTE_MS, WindowedSketch
from planty_broker.northbound.metrics import RTT_QUANTILES
from planty_broker.services.stats.views import SERIES_QUANTILES, latency_series

T0 = 1_764_028_800_000  # a whole day in unix ms (slots of every level start here)
GAMMA = 1.01 / 0.99
SERVED = sorted({*DEFAULT_QUANTILES, *SERIES_QUANTILES, *RTT_QUANTILES})


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(Fraction(str(q)) * len(ordered))) - 1]


def reached_by_more_than(values: list[float], q: float) -> float:
    """The largest sample that more than (1 - q) n samples reach or exceed (the definition)."""
    n = len(values)
    return max(v for v in values if sum(1 for x in values if x >= v) > (1 - Fraction(str(q))) * n)


def assert_honest(values: list[float], q: float, got: float | None) -> None:
    truth = nearest_rank(values, q)
    assert got is not None
    assert got >= truth, (q, truth, got)
    assert got <= truth * GAMMA * (1 + 1e-9), (q, truth, got)


def samples(draw: st.DrawFn, n: int) -> list[float]:
    """Log-normal round trips (ms) with a share of outliers up to a few seconds."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    outlier_share = draw(st.sampled_from((0.0, 0.005, 0.01, 0.02, 0.05, 0.25)))
    out = []
    for _ in range(n):
        if rng.random() < outlier_share:
            out.append(rng.uniform(1000.0, 10_000.0))
        else:
            out.append(rng.lognormvariate(1.0, 0.5))
    return out


@st.composite
def small_samples(draw: st.DrawFn) -> list[float]:
    values: list[float] = draw(
        st.lists(
            st.one_of(
                st.floats(min_value=0.01, max_value=50.0),
                st.floats(min_value=1000.0, max_value=60_000.0),  # outliers
            ),
            min_size=1,
            max_size=120,
        )
    )
    return values


@st.composite
def large_samples(draw: st.DrawFn) -> list[float]:
    return samples(draw, draw(st.integers(min_value=200, max_value=5000)))


def window_of(values: list[float]) -> tuple[WindowedSketch, int]:
    """All values inside one 5-minute slot (so one series point covers them all)."""
    w = WindowedSketch()
    for i, v in enumerate(values):
        w.add(v, T0 + (i * 250_000) // max(len(values), 1))
    return w, T0 + 5 * MINUTE_MS - 1


def check_everything_served(values: list[float]) -> None:
    w, now = window_of(values)
    summary = latency_summary(w, HOUR_MS, now, SERVED)
    assert summary["count"] == len(values)
    assert summary["max_ms"] == max(values)
    for q in SERVED:
        if len(values) <= 300:  # the definition, checked directly where it is cheap
            assert nearest_rank(values, q) == reached_by_more_than(values, q)
        assert_honest(values, q, summary[f"p{q * 100:g}_ms"])
    (point,) = latency_series(w, HOUR_MS, now)
    assert (point["count"], point["max_ms"]) == (len(values), max(values))
    for q in SERIES_QUANTILES:
        assert_honest(values, q, point[f"p{q * 100:g}_ms"])
    for q, got in zip(RTT_QUANTILES, w.quantiles(RTT_QUANTILES, HOUR_MS, now), strict=True):
        assert_honest(values, q, got)


@settings(max_examples=300)
@given(small_samples())
def test_small_samples_with_outliers(values: list[float]) -> None:
    check_everything_served(values)


@settings(max_examples=40)
@given(large_samples())
def test_large_samples_with_outliers(values: list[float]) -> None:
    check_everything_served(values)


def test_four_round_trips_one_slow_the_issue_case() -> None:
    values = [1.0, 1.0, 1.0, 4743.0]
    w, now = window_of(values)
    s = latency_summary(w, HOUR_MS, now)
    assert s["max_ms"] == s["p99_ms"] == s["p95_ms"] == 4743.0
    assert s["count"] == 4


def test_one_slow_in_a_hundred_is_the_p99_and_one_in_a_thousand_is_not() -> None:
    hundred = [2.0] * 99 + [4000.0]
    assert_honest(hundred, 0.99, latency_summary(window_of(hundred)[0], HOUR_MS, T0 + 1)["p99_ms"])
    thousand = [2.0] * 999 + [4000.0]
    p99 = latency_summary(window_of(thousand)[0], HOUR_MS, T0 + 1)["p99_ms"]
    assert 2.0 <= p99 <= 2.0 * GAMMA  # 1 in 1000 is under 1 %: rank 990 is a fast one
