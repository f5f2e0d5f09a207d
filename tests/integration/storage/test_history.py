"""The `HistoryStore` contract (rollups and retention), identically on memory, SQLite and
PostgreSQL. Times are fixed numbers: nothing here reads the clock."""

from __future__ import annotations

from typing import Any

import pytest

from planty_broker.domain.history import DAY_MS, HOUR_MS
from planty_broker.domain.models import Reading
from tests.integration.storage.test_contract import device, offline, online

T0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS  # an hour boundary


def reading(device_id: str, seq: int, ts_ms: int, received_ms: int | None = None, **v: float):
    return Reading(device_id, seq, ts_ms, ts_ms if received_ms is None else received_ms, v)


async def _fill(store: Any) -> None:
    await store.add_device(device("d1"))
    await store.add_device(device("d2"))
    await store.append_readings(
        [
            reading("d1", 0, T0 + 1_000, t=20.0, m=0.5),
            reading("d1", 1, T0 + 2_000, t=22.0),
            reading("d1", 2, T0 + 3_000, t=18.0, m=0.3),
            reading("d2", 0, T0 + 4_000, t=5.0),
            reading("d1", 3, T0 + HOUR_MS + 10, t=30.0),
        ]
    )


async def test_rollup_per_device_sensor_and_hour(store: Any) -> None:
    await _fill(store)
    assert await store.roll_up_readings(T0 + 2 * HOUR_MS, 1000) == 5
    rows = await store.hourly_readings("d1", None, None, 100)
    got = [(r.hour_ms, r.sensor, r.count, r.min, r.max, r.avg, r.last) for r in rows]
    assert got == [
        (T0, "m", 2, 0.3, 0.5, pytest.approx(0.4), 0.3),
        (T0, "t", 3, 18.0, 22.0, pytest.approx(20.0), 18.0),
        (T0 + HOUR_MS, "t", 1, 30.0, 30.0, 30.0, 30.0),
    ]
    assert [r.sensor for r in await store.hourly_readings("d2", None, None, 100)] == ["t"]
    # only the newest hour when asked for one, and ranges by the hour's start
    assert {r.hour_ms for r in await store.hourly_readings("d1", None, None, 1)} == {T0 + HOUR_MS}
    assert {r.hour_ms for r in await store.hourly_readings("d1", T0 + 1, None, 10)} == {
        T0 + HOUR_MS
    }
    assert await store.roll_up_readings(T0 + 2 * HOUR_MS, 1000) == 0  # each reading once


async def test_rollup_stops_at_readings_too_recent_and_in_chunks(store: Any) -> None:
    await _fill(store)
    assert await store.roll_up_readings(T0 + 3_500, 1000) == 3  # d2's arrived at T0 + 4000
    assert await store.roll_up_readings(T0 + 2 * HOUR_MS, 1) == 1
    assert await store.roll_up_readings(T0 + 2 * HOUR_MS, 1000) == 1
    (t,) = [r for r in await store.hourly_readings("d1", T0, T0, 10) if r.sensor == "t"]
    assert (t.count, t.sum) == (3, 60.0)


async def test_a_late_reading_merges_into_its_hour(store: Any) -> None:
    await _fill(store)
    await store.roll_up_readings(T0 + 2 * HOUR_MS, 1000)
    # a device that buffered while offline: old ts, arrives now; a new min and an old "last"
    await store.append_readings([reading("d1", 9, T0 + 500, T0 + 2 * HOUR_MS, t=-4.0)])
    await store.roll_up_readings(T0 + 3 * HOUR_MS, 1000)
    (t,) = [r for r in await store.hourly_readings("d1", T0, T0, 10) if r.sensor == "t"]
    assert (t.count, t.min, t.max, t.last, t.last_ts_ms) == (4, -4.0, 22.0, 18.0, T0 + 3_000)


async def test_raw_readings_go_only_once_rolled_up_and_old_enough(store: Any) -> None:
    await _fill(store)
    # nothing rolled up yet: nothing may go, however old
    assert await store.prune_readings(T0 + 100 * DAY_MS, 1000) == 0
    await store.roll_up_readings(T0 + 3_500, 1000)  # the first three
    assert await store.prune_readings(T0 + 100 * DAY_MS, 1000) == 3
    left = await store.query_readings("d1", None, None, 100)
    assert [r.seq for r in left] == [3]
    await store.roll_up_readings(T0 + 2 * HOUR_MS, 1000)
    assert await store.prune_readings(T0 + 4_001, 1000) == 1  # d2's; d1's last is younger
    assert (await store.history_usage()).readings == 1
    # the rollups stay: the charts still draw
    assert len(await store.hourly_readings("d1", None, None, 100)) == 3


async def test_rollups_and_presence_have_their_own_retention(store: Any) -> None:
    await _fill(store)
    await store.roll_up_readings(T0 + 2 * HOUR_MS, 1000)
    assert await store.prune_rollups(T0 + HOUR_MS) == 3  # every rollup of hour T0
    assert [r.hour_ms for r in await store.hourly_readings("d1", None, None, 100)] == [T0 + HOUR_MS]
    await store.append_presence(
        [online("d1", T0), offline("d1", T0 + 10), online("d1", T0 + 20), online("d2", T0)]
    )
    # everything is old, but each device keeps the state it is in
    assert await store.prune_presence(T0 + DAY_MS, 1000) == 2
    last = await store.last_presence()
    assert (last["d1"].at_ms, last["d1"].state.value) == (T0 + 20, "online")
    assert last["d2"].at_ms == T0
    assert (await store.history_usage()).presence == 2


async def test_removing_a_device_removes_its_rollups(store: Any) -> None:
    await _fill(store)
    await store.roll_up_readings(T0 + 2 * HOUR_MS, 1000)
    await store.remove_device("d1")
    assert await store.hourly_readings("d1", None, None, 100) == []
    assert (await store.history_usage()).rollups == 1
