"""History roll-ups: exact figures, replays never counted twice, bucket boundaries."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planty_broker.northbound.firestore.model import bucket_bounds
from planty_broker.northbound.firestore.rollup import Bucket

T0 = int(dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC).timestamp() * 1000)


def test_bucket_ids_are_utc_hours_or_days() -> None:
    assert bucket_bounds(T0 + 59 * 60_000, "hour") == ("2026-11-27T12", T0, T0 + 3_600_000)
    assert bucket_bounds(T0 + 3_600_000, "hour")[0] == "2026-11-27T13"
    day_start = T0 - 12 * 3_600_000
    assert bucket_bounds(T0, "day") == ("2026-11-27", day_start, day_start + 86_400_000)


@given(st.lists(st.floats(min_value=-50, max_value=50), min_size=1, max_size=60))
def test_figures_are_exact_and_a_replay_adds_nothing(values: list[float]) -> None:
    b = Bucket("d", "h", T0, T0 + 3_600_000)
    for i, v in enumerate(values, start=1):
        assert b.fold(i, T0 + i, {"t": v})
    before = b.to_doc(90)
    for i, v in enumerate(values, start=1):  # the same events again (crash, retry)
        assert not b.fold(i, T0 + i, {"t": v})
    assert b.to_doc(90) == before
    agg = before["readings"]["t"]
    assert agg["count"] == len(values) == before["messages"]
    assert agg["min"] == min(values) and agg["max"] == max(values)
    assert agg["sum"] == pytest.approx(sum(values))
    assert agg["last"] == values[-1]


def test_a_bucket_seeded_from_its_document_skips_what_it_holds() -> None:
    first = Bucket("d", "h", T0, T0 + 3_600_000)
    for i in range(1, 6):
        first.fold(i, T0 + i, {"t": float(i)})
    stored = first.to_doc(90)  # written to Firestore, cursor not yet confirmed: a crash
    again = Bucket("d", "h", T0, T0 + 3_600_000)
    again.seed(stored)
    for i in range(1, 9):  # the log replays from the old cursor
        again.fold(i, T0 + i, {"t": float(i)})
    doc = again.to_doc(90)
    assert doc["messages"] == 8
    assert doc["readings"]["t"]["count"] == 8
    assert doc["readings"]["t"]["sum"] == sum(range(1, 9))
