"""Long-term history on a clock moved across days: raw readings go, rollups stay."""

from __future__ import annotations

import pytest

from planty_broker.domain.history import (
    DAY_MS,
    HOUR_MS,
    HourlyRollup,
    RetentionPolicy,
    hour_of,
    merge,
    roll_up,
)
from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.services.history import HistoryService
from planty_broker.storage.memory import MemoryStore

T0 = 1_900_000_000_000 - 1_900_000_000_000 % DAY_MS  # a midnight, far from today


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_roll_up_and_merge_are_order_free() -> None:
    rows = [("d", T0 + i * 60_000, {"t": float(i % 7), "m": float(-i)}) for i in range(120)]
    whole = roll_up(rows)
    halves = roll_up(rows[60:])
    for key, part in roll_up(rows[:60]).items():
        halves[key] = merge(halves[key], part) if key in halves else part
    assert whole == halves
    t0 = whole[("d", T0, "t")]
    assert (t0.count, t0.min, t0.max, t0.last, t0.last_ts_ms) == (
        60,
        0.0,
        6.0,
        3.0,
        T0 + 59 * 60_000,
    )
    assert hour_of(T0 + HOUR_MS + 5) == T0 + HOUR_MS
    assert roll_up([("d", T0, {"ok": 1.0, "bad": True, "nan": "x"})]).keys() == {("d", T0, "ok")}  # type: ignore[dict-item]


def test_avg_of_an_empty_rollup_is_zero() -> None:
    assert HourlyRollup("d", "t", 0, 0, 0, 0, 0, 0, 0).avg == 0.0


async def test_days_pass_raw_readings_go_rollups_stay() -> None:
    store = MemoryStore()
    await store.open()
    await store.add_device(DeviceRecord("d1", T0, "h"))
    clock = Clock(T0)
    policy = RetentionPolicy(readings_ms=2 * DAY_MS, rollups_ms=30 * DAY_MS, presence_ms=DAY_MS)
    svc = HistoryService(store, policy, clock=clock)
    # one reading every 10 minutes for 5 days, each stored as it arrives
    for day in range(5):
        batch = [
            Reading("d1", i, t, t, {"t": float(day)})
            for i, t in enumerate(range(T0 + day * DAY_MS, T0 + (day + 1) * DAY_MS, 600_000))
        ]
        await store.append_readings(batch)
        clock.now = T0 + (day + 1) * DAY_MS
        await svc.run_once()
    totals = svc.totals
    assert totals.rolled_up == 5 * 144
    # kept: the last two days of raw readings, every hour of rollups
    raw = await store.query_readings("d1", None, None, 10_000)
    assert len(raw) == 2 * 144
    assert raw[0].ts_ms == T0 + 3 * DAY_MS
    assert totals.readings_deleted == 3 * 144
    hours = await svc.hourly("d1", None, None, 10_000)
    assert len(hours) == 5 * 24
    assert {h.count for h in hours} == {6}
    assert hours[0].hour_ms == T0 and hours[0].avg == 0.0 and hours[-1].avg == 4.0

    # a month later the rollups of the first days go too; the newest stay
    clock.now = T0 + 33 * DAY_MS
    await svc.run_once()
    left = await svc.hourly("d1", None, None, 10_000)
    assert left[0].hour_ms == T0 + 3 * DAY_MS
    assert len(left) == 2 * 24
    assert (await store.history_usage()).readings == 0


async def test_readings_younger_than_the_lag_wait_for_the_next_pass() -> None:
    store = MemoryStore()
    await store.open()
    await store.add_device(DeviceRecord("d1", T0, "h"))
    clock = Clock(T0 + 30_000)
    svc = HistoryService(store, RetentionPolicy(DAY_MS, DAY_MS, DAY_MS), clock=clock)
    await store.append_readings([Reading("d1", 0, T0, T0 + 10_000, {"t": 1.0})])
    await svc.run_once()
    assert svc.totals.rolled_up == 0
    clock.now = T0 + 71_000
    await svc.run_once()
    assert svc.totals.rolled_up == 1


@pytest.mark.parametrize("keep", [0.5, 3.0])
def test_cutoffs(keep: float) -> None:
    p = RetentionPolicy(int(keep * DAY_MS), 10 * DAY_MS, DAY_MS)
    c = p.cutoffs(T0 + 12 * DAY_MS + 5)
    assert c.readings_before_ms == T0 + 12 * DAY_MS + 5 - int(keep * DAY_MS)
    assert c.rollups_before_ms == T0 + 2 * DAY_MS
