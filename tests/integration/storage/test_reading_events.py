"""A reading's event by reference (issue 17): the event log returns the same events as when
each reading had its own event row, on memory, SQLite and PostgreSQL: every reading once,
in id order, interleaved with the other events; unchanged when the readings are deleted
(device removed, raw retention); and a database written before keeps its events."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from planty_broker.domain.events import NewEvent
from planty_broker.domain.models import (
    DeviceRecord,
    PresenceCause,
    PresenceState,
    PresenceTransition,
    Reading,
)
from planty_broker.storage.sql import SqlStore
from tests.integration.storage.conftest import StoreFactory

pytestmark = pytest.mark.asyncio(loop_scope="session")


def reading(device_id: str, seq: int, received_ms: int) -> Reading:
    return Reading(device_id, seq, received_ms - 5, received_ms, {"t": float(seq), "m": 0.5})


async def _mixed_log(store: Any) -> list[tuple[str, Any]]:
    """Batches of readings interleaved with presence and device errors; returns, in order,
    what each event must be: ("reading", (device, seq)) or (type, at_ms)."""
    for d in ("d1", "d2"):
        await store.add_device(DeviceRecord(d, 0, "h"))
    expected: list[tuple[str, Any]] = []
    at = 1_000
    seq = 0
    for batch in range(6):
        readings = []
        for _ in range(7 + batch):
            seq += 1
            at += 1
            readings.append(reading("d1" if seq % 3 else "d2", seq, at))
        await store.append_readings(readings)
        expected += [("reading", (r.device_id, r.seq)) for r in readings]
        at += 1
        await store.append_presence(
            [PresenceTransition("d1", PresenceState.ONLINE, at, PresenceCause.STATUS_ONLINE)]
        )
        expected.append(("presence", at))
        at += 1
        await store.append_events([NewEvent(at, "device_error", "d2", {"kind": "bad_topic"})])
        expected.append(("device_error", at))
    return expected


def _shape(e: Any) -> tuple[str, Any]:
    if e.type == "reading":
        return ("reading", (e.device_id, e.data["seq"]))
    return (e.type, e.at_ms)


async def _read_all(store: Any, page: int, types: list[str] | None = None) -> list[Any]:
    out: list[Any] = []
    after = 0
    while True:
        got = await store.read_events(after, page, types)
        if not got:
            return out
        out += got
        after = got[-1].id


@pytest.mark.parametrize("page", [1, 4, 1000])
async def test_every_reading_once_in_order_with_the_other_events(store: Any, page: int) -> None:
    expected = await _mixed_log(store)
    events = await _read_all(store, page)
    assert [_shape(e) for e in events] == expected
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))  # strictly increasing
    first = next(e for e in events if e.type == "reading")
    assert first.data == {"seq": 1, "ts_ms": 996, "readings": {"t": 1.0, "m": 0.5}}
    assert first.at_ms == 1_001 and first.device_id == "d1"
    only = await _read_all(store, page, ["reading"])
    assert [_shape(e) for e in only] == [x for x in expected if x[0] == "reading"]
    others = await _read_all(store, page, ["presence", "device_error"])
    assert [_shape(e) for e in others] == [x for x in expected if x[0] != "reading"]
    b = await store.event_bounds()
    assert (b.first_id, b.last_id) == (ids[0], ids[-1])


async def test_removing_a_device_keeps_its_reading_events(store: Any) -> None:
    await _mixed_log(store)
    before = await _read_all(store, 1000)
    assert await store.remove_device("d2")
    assert await store.query_readings("d2", None, None, 100) == []
    after = await _read_all(store, 1000)
    assert after == before  # same ids, same data
    await store.append_readings([reading("d1", 999, 90_000)])
    last = (await _read_all(store, 1000))[-1]
    assert last.id > before[-1].id and last.data["seq"] == 999


async def test_raw_readings_retention_keeps_the_log(store: Any) -> None:
    await _mixed_log(store)
    before = await _read_all(store, 1000)
    assert await store.roll_up_readings(10**13, 10_000) > 0
    assert await store.prune_readings(10**13, 10_000) > 0
    assert await store.query_readings("d1", None, None, 100) == []
    assert await _read_all(store, 1000) == before


async def test_pruning_the_log_counts_reading_events_and_keeps_the_readings(store: Any) -> None:
    expected = await _mixed_log(store)
    events = await _read_all(store, 1000)
    await store.set_consumer_cursor("srv", events[3].id, 1)
    through = events[20].id
    r = await store.prune_events(through)
    assert r.deleted == 21 and r.dropped_by_consumer == {"srv": 17} and r.unconfirmed == 17
    assert [_shape(e) for e in await _read_all(store, 1000)] == expected[21:]
    assert await store.event_id_before(events[10].at_ms) == 0  # those are gone from the log
    assert await store.event_id_before(events[30].at_ms) == events[29].id
    assert len(await store.query_readings("d1", None, None, 1000)) > 0  # readings stay


async def test_a_database_written_before_keeps_its_reading_events(
    store_factory: StoreFactory,
) -> None:
    s = store_factory()
    if not isinstance(s, SqlStore):
        pytest.skip("SQL only: the layout before issue 17")
    await s.open()
    try:
        await s.add_device(DeviceRecord("old", 0, "h"))

        def write_the_old_way(conn: Any) -> None:
            # what the store wrote before: reading rows with their own ids and one event row
            # each, no `events.readings_from`
            conn.execute(text("DELETE FROM meta WHERE key = 'events.readings_from'"))
            for i in range(1, 4):
                conn.execute(
                    text(
                        'INSERT INTO readings (id, device_id, seq, ts_ms, received_ms, "values") '
                        "VALUES (:id, 'old', :seq, 10, 20, '{\"t\": 1.0}')"
                    ),
                    {"id": 1_000 + i, "seq": i},
                )
            for i in range(1, 4):
                conn.execute(
                    text(
                        "INSERT INTO events (at_ms, type, device_id, data) VALUES "
                        "(20, 'reading', 'old', :data)"
                    ),
                    {"data": f'{{"seq": {i}, "ts_ms": 10, "readings": {{"t": 1.0}}}}'},
                )

        await s.run(write_the_old_way)
    finally:
        await s.close()
    s = store_factory()
    await s.open()
    try:
        await s.append_readings([Reading("old", 4, 11, 21, {"t": 2.0})])
        events = await _read_all(s, 2)
        assert [(e.type, e.data["seq"]) for e in events[-4:]] == [
            ("reading", 1),
            ("reading", 2),
            ("reading", 3),
            ("reading", 4),
        ]
        assert events[-1].id > 1_003  # above every reading id written before
        assert len([e for e in events if e.device_id == "old"]) == 4  # none twice
    finally:
        await s.close()
