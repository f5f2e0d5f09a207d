"""The event log service on the memory store: cursors, consumers, retention, counted drops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest

from planty_broker.config import EventSettings
from planty_broker.domain.events import NewEvent
from planty_broker.domain.models import (
    DeviceRecord,
    PresenceCause,
    PresenceState,
    PresenceTransition,
    Reading,
)
from planty_broker.services.bus import Bus, DeviceError
from planty_broker.services.events import CursorError, EventService
from planty_broker.storage.memory import MemoryStore

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = 1_800_000_000_000


@contextlib.asynccontextmanager
async def service(**kw: object) -> AsyncIterator[tuple[EventService, MemoryStore, Bus]]:
    store = MemoryStore()
    await store.open()
    await store.add_device(DeviceRecord("dev-1", 0, "h"))
    bus = Bus()
    clock = {"now": NOW}
    svc = EventService(store, bus, msgspec.convert(kw, EventSettings), clock=lambda: clock["now"])
    await svc.start()
    try:
        yield svc, store, bus
    finally:
        await svc.stop()


async def fill(store: MemoryStore, n: int, at: int = NOW) -> None:
    await store.append_events([NewEvent(at + i, "device_error", None, {"i": i}) for i in range(n)])


async def test_readings_and_presence_have_their_event_in_the_same_write() -> None:
    async with service() as (svc, store, _):
        await store.append_readings([Reading("dev-1", 7, NOW, NOW + 1, {"light": 3.0})])
        await store.append_readings([Reading("gone", 1, NOW, NOW, {"light": 1.0})])  # dropped
        await store.append_presence(
            [
                PresenceTransition(
                    "dev-1", PresenceState.ONLINE, NOW + 2, PresenceCause.STATUS_ONLINE
                )
            ]
        )
        page = await svc.read(0, 10)
        assert [(e.id, e.type, e.device_id) for e in page.events] == [
            (1, "reading", "dev-1"),
            (2, "presence", "dev-1"),
        ]
        assert page.events[0].data == {"seq": 7, "ts_ms": NOW, "readings": {"light": 3.0}}
        assert page.events[1].data == {"state": "online", "cause": "status_online"}
        assert page.events[0].at_ms == NOW + 1  # when it was received


async def test_device_errors_from_the_bus_are_appended() -> None:
    async with service() as (svc, _, bus):
        seen = svc.generation
        bus.publish(
            DeviceError("dev-1", "unknown_command_id", "ack for unknown command id 'x'", NOW)
        )
        await asyncio.wait_for(svc.wait_new(seen, 5), 6)
        [e] = (await svc.read(0, 10, ["device_error"])).events
        assert e.device_id == "dev-1" and e.data["kind"] == "unknown_command_id"


async def test_cursor_paging_and_type_filter() -> None:
    async with service() as (svc, store, _):
        await fill(store, 5)
        await store.append_readings([Reading("dev-1", 0, NOW, NOW, {"t": 1.0})])
        first = await svc.read(0, 2)
        second = await svc.read(first.next_after, 10)
        assert [e.id for e in first.events + second.events] == [1, 2, 3, 4, 5, 6]
        assert [e.id for e in (await svc.read(0, 10, ["reading"])).events] == [6]


async def test_consumer_cursor_moves_forward_only_and_within_the_log() -> None:
    async with service() as (svc, store, _):
        await fill(store, 3)
        c = await svc.confirm("server", 2)
        assert (c.name, c.cursor, c.dropped) == ("server", 2, 0)
        with pytest.raises(CursorError, match="only moves forward"):
            await svc.confirm("server", 1)
        with pytest.raises(CursorError, match="beyond the newest event"):
            await svc.confirm("server", 4)
        assert (await svc.confirm("server", 3)).cursor == 3


async def test_events_stay_until_every_consumer_confirmed() -> None:
    async with service() as (svc, store, _):
        await fill(store, 10)
        await svc.confirm("a", 8)
        await svc.confirm("b", 4)
        r = await svc.prune_once()
        assert r is not None and (r.deleted, r.through_id, r.unconfirmed) == (4, 4, 0)
        assert [e.id for e in (await svc.read(0, 100)).events] == [5, 6, 7, 8, 9, 10]
        await svc.remove_consumer("b")
        await svc.prune_once()
        assert [e.id for e in (await svc.read(0, 100)).events] == [9, 10]


async def test_plain_retention_waits_for_consumers() -> None:
    async with service(retention_max_rows=3, retention_max_age_s=60) as (svc, store, _):
        await fill(store, 10, at=NOW - 120_000)
        await svc.confirm("slow", 2)
        r = await svc.prune_once()
        assert r is not None and (r.through_id, r.unconfirmed) == (2, 0)
        assert [e.id for e in (await svc.read(0, 100)).events] == list(range(3, 11))


async def test_size_retention_drops_unconfirmed_events_and_counts_them() -> None:
    async with service(unconfirmed_max_rows=3) as (svc, store, _):
        await fill(store, 10)
        await svc.confirm("slow", 2)
        r = await svc.prune_once()
        assert r is not None and r.through_id == 7
        assert r.dropped_by_consumer == {"slow": 5} and r.unconfirmed == 5
        slow = await svc.consumer("slow")
        assert slow is not None and slow.dropped == 5
        bounds = await svc.bounds()
        assert (bounds.first_id, bounds.last_id, bounds.pruned_through) == (8, 10, 7)
        assert bounds.deleted_unconfirmed == 5
        page = await svc.read(2, 100)  # a reader behind the cut is told, not silently skipped
        assert page.missed_through == 7 and [e.id for e in page.events] == [8, 9, 10]


async def test_unconfirmed_age_bound_drops_and_counts() -> None:
    async with service(unconfirmed_max_age_s=60) as (svc, store, _):
        await fill(store, 3, at=NOW - 120_000)
        await fill(store, 2, at=NOW - 1_000)
        await svc.confirm("gone-away", 1)
        r = await svc.prune_once()
        assert r is not None and (r.deleted, r.unconfirmed) == (3, 2)
        assert r.dropped_by_consumer == {"gone-away": 2}


async def test_security_events_outlive_the_prefix_retention() -> None:
    async with service(retention_max_rows=2, security_keep_days=1) as (svc, store, _):
        await store.append_events([NewEvent(NOW - 1000, "credential", "dev-1", {"event": "x"})])
        await fill(store, 5)
        r = await svc.prune_once()
        assert r is not None and r.deleted == 3
        # a reader from the start gets the credential event, and is told of the cut
        page = await svc.read(0, 100)
        assert [e.id for e in page.events] == [1, 5, 6] and page.missed_through == 4
        assert (await svc.bounds()).pruned_through == 4
        # two days on, it has had its own retention
        await fill(store, 1, at=NOW + 2 * 86_400_000)
        svc._clock = lambda: NOW + 2 * 86_400_000
        await svc.prune_once()
        assert [e.type for e in (await svc.read(0, 100)).events] == ["device_error"] * 2


async def test_age_retention() -> None:
    async with service(retention_max_age_s=60) as (svc, store, _):
        await fill(store, 3, at=NOW - 120_000)
        await fill(store, 2, at=NOW - 1_000)
        r = await svc.prune_once()
        assert r is not None and r.deleted == 3
        assert [e.id for e in (await svc.read(0, 10)).events] == [4, 5]


async def test_ids_never_go_back_after_the_whole_log_was_pruned() -> None:
    async with service() as (svc, store, _):
        await fill(store, 3)
        await svc.confirm("a", 3)
        await svc.prune_once()
        bounds = await svc.bounds()
        assert (bounds.first_id, bounds.last_id) == (None, 3)
        await fill(store, 1)
        assert [e.id for e in (await svc.read(3, 10)).events] == [4]
