"""The latency sketch answers nearest-rank quantiles, never below the exact ones and within
its relative error above them, in bounded memory."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planty_broker.domain.stats.sketch import KeyMapping, LatencySketch, count_of_bytes

ACCURACY = 0.01
QS = (0.0, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
# 1e-2..1e6 ms: a ratio of 1e8, inside what 1024 buckets of 1% span (7.7e8), so nothing folds.
latencies = st.lists(
    st.floats(min_value=1e-2, max_value=1e6, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=400,
)


GAMMA = (1 + ACCURACY) / (1 - ACCURACY)  # a bucket's width: the bound above the exact value


def exact(values: list[float], q: float) -> float:
    """Nearest rank, computed exactly: the sample of rank ceil(q n) (at least 1) when sorted."""
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(str(q)) * len(ordered)))
    return ordered[rank - 1]


def sketch_of(values: list[float], mapping: KeyMapping | None = None) -> LatencySketch:
    sketch = LatencySketch(mapping) if mapping else LatencySketch()
    for v in values:
        sketch.add(v)
    return sketch


def assert_within_bound(values: list[float], got: tuple[float | None, ...]) -> None:
    for q, estimate in zip(QS, got, strict=True):
        truth = exact(values, q)
        assert estimate is not None
        assert truth <= estimate <= truth * GAMMA * (1 + 1e-9), (q, truth, estimate)


@settings(max_examples=300, deadline=None)
@given(latencies)
def test_quantiles_are_within_the_relative_error_of_the_exact_ones(values: list[float]) -> None:
    assert_within_bound(values, sketch_of(values).quantiles(QS))


@settings(max_examples=150, deadline=None)
@given(latencies, latencies)
def test_merge_answers_like_one_sketch_of_the_union(a: list[float], b: list[float]) -> None:
    merged = sketch_of(a)
    merged.merge(sketch_of(b))
    union = sketch_of(a + b)
    assert merged.count == union.count == len(a) + len(b)
    assert merged.quantiles(QS) == union.quantiles(QS)
    assert (merged.min, merged.max) == (min(a + b), max(a + b))
    assert_within_bound(a + b, merged.quantiles(QS))


@settings(max_examples=100, deadline=None)
@given(latencies)
def test_frozen_bytes_answer_like_the_live_sketch(values: list[float]) -> None:
    live = sketch_of(values)
    blob = live.to_bytes()
    assert count_of_bytes(blob) == len(values)
    thawed = LatencySketch.from_bytes(blob)
    assert thawed.quantiles(QS) == live.quantiles(QS)
    assert thawed.mean == pytest.approx(live.mean)


def test_a_frozen_slot_of_scattered_values_is_stored_sparse_and_reads_back() -> None:
    scattered = [1.0, 50.0, 2500.0, 60_000.0]  # ~550 buckets apart, 4 in use
    live = sketch_of(scattered)
    blob = live.to_bytes()
    header = len(LatencySketch().to_bytes())
    assert len(blob) <= header + 4 * 3
    assert LatencySketch.from_bytes(blob).quantiles(QS) == live.quantiles(QS)
    packed = sketch_of([10.0 + i * 0.2 for i in range(100)])  # ~100 adjacent buckets, all used
    assert len(packed.to_bytes()) <= header + 100


def test_known_distribution_gives_known_percentiles() -> None:
    values = [float(v) for v in range(1, 1001)]  # 1..1000 ms
    p50, p95, p99 = sketch_of(values).quantiles((0.5, 0.95, 0.99))
    assert 500 <= p50 <= 500 * GAMMA
    assert 950 <= p95 <= 950 * GAMMA
    assert 990 <= p99 <= 990 * GAMMA


def test_empty_sketch_has_no_quantiles() -> None:
    sketch = LatencySketch()
    assert sketch.quantiles((0.5, 0.99)) == (None, None)
    assert (sketch.count, sketch.min, sketch.max, sketch.mean) == (0, None, None, None)


def test_zero_and_negative_latencies_count_as_zero() -> None:
    sketch = sketch_of([0.0, -5.0, 0.0, 10.0])
    assert sketch.count == 4
    assert 0.0 <= sketch.quantile(0.5) <= 0.001  # the zero bucket's upper edge (min_value)
    assert sketch.min == 0.0
    assert sketch.quantile(1.0) == 10.0


def test_nan_and_infinity_are_refused() -> None:
    sketch = LatencySketch()
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            sketch.add(bad)
    assert sketch.count == 0


def test_counters_widen_past_255_and_65535_without_losing_counts() -> None:
    sketch = LatencySketch()
    for _ in range(70_000):
        sketch.add(42.0)
    sketch.add(1000.0)
    assert sketch.count == 70_001
    assert 42.0 <= sketch.quantile(0.5) <= 42.0 * GAMMA
    assert sketch.quantile(1.0) == 1000.0
    again = LatencySketch.from_bytes(sketch.to_bytes())
    assert again.quantiles((0.5, 0.99999, 1.0)) == sketch.quantiles((0.5, 0.99999, 1.0))


def test_bucket_count_is_bounded_and_the_lowest_fold_keeping_high_quantiles() -> None:
    mapping = KeyMapping(relative_accuracy=ACCURACY, max_buckets=64)
    values = [1.5**i for i in range(-10, 60)]  # a range far wider than 64 buckets
    sketch = sketch_of(values, mapping)
    blob = sketch.to_bytes()
    assert len(blob) <= len(LatencySketch(mapping).to_bytes()) + 64
    for q in (0.99, 1.0):  # the top 64 buckets span 3.6x: the highest values stay exact
        truth = exact(values, q)
        assert truth <= sketch.quantile(q) <= truth * GAMMA
    # folded low values are over-estimated, never lost
    assert sketch.count == len(values)
    estimate = sketch.quantile(0.5)
    assert estimate is not None
    assert estimate > exact(values, 0.5)


def test_a_huge_value_after_a_tiny_one_folds_the_tiny_one() -> None:
    sketch = sketch_of([0.001, 790_526.0])  # wider than 1024 buckets can span
    assert sketch.count == 2
    assert sketch.quantile(1.0) == 790_526.0
    assert sketch.quantile(0.0) == pytest.approx(0.001, rel=0.05)


def test_merge_keeps_the_bound_when_folding() -> None:
    mapping = KeyMapping(max_buckets=64)
    low_values = [0.01 * (i + 1) for i in range(50)]
    high_values = [1e5 + i for i in range(50)]
    low = sketch_of(low_values, mapping)
    high = sketch_of(high_values, mapping)
    low.merge(high)
    assert low.count == 100
    assert len(low.to_bytes()) <= len(LatencySketch(mapping).to_bytes()) + 64
    truth = exact(low_values + high_values, 0.99)
    assert truth <= low.quantile(0.99) <= truth * GAMMA


def test_merging_different_accuracies_is_refused() -> None:
    with pytest.raises(ValueError, match="different key mappings"):
        LatencySketch().merge(LatencySketch(KeyMapping(relative_accuracy=0.02)))


def test_quantile_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        sketch_of([1.0]).quantile(1.5)


def test_quantiles_come_back_in_the_order_asked() -> None:
    sketch = sketch_of([float(v) for v in range(1, 101)])
    assert sketch.quantiles((0.99, 0.5)) == (sketch.quantile(0.99), sketch.quantile(0.5))
    assert 99 <= sketch.quantile(0.99) <= 99 * GAMMA


def test_four_round_trips_with_one_slow_give_the_slow_one_as_p99() -> None:
    """The issue's case: max 4743 ms must not come with a p99 of 1 ms."""
    sketch = sketch_of([1.0, 1.0, 1.0, 4743.0])
    p50, p95, p99 = sketch.quantiles((0.5, 0.95, 0.99))
    assert p99 == p95 == 4743.0  # clamped to the max: exact
    assert 1.0 <= p50 <= 1.0 * GAMMA


def test_nearest_rank_is_not_pushed_up_by_floating_point() -> None:
    # 0.07 x 100 = 7.000000000000001 in floating point; the rank is still 7, not 8.
    sketch = sketch_of([float(v) for v in range(1, 101)])
    assert 7.0 <= sketch.quantile(0.07) <= 7.0 * GAMMA
