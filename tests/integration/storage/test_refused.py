"""Refused for good vs. unavailable, on the real databases: the store classifies each failure
by class (sql_errors.refused), so writers set aside the first and hold on to the second.
And the dead letter table, on memory, SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from planty_broker.domain.dead_letters import MAX_PAYLOAD_BYTES, dead_letter
from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.ports.store import Store, StoreRejectedError
from planty_broker.storage.memory import MemoryStore
from planty_broker.storage.memory_dead_letters import MemoryDeadLetterStore
from planty_broker.storage.sql import SqlStore
from planty_broker.storage.sql_dead_letters import SqlDeadLetterStore

pytestmark = pytest.mark.asyncio(loop_scope="session")


def reading(seq: int = 1, name: str = "t", ts: int = 1_764_000_000_000) -> Reading:
    return Reading("dev-1", seq, ts, ts, {name: 1.0})


@pytest.mark.parametrize(
    "bad",
    [
        reading(seq=2**63),
        reading(ts=-(2**63) - 1),
        reading(name="t\ud800"),
    ],
    ids=["seq-past-64-bits", "ts-past-64-bits", "lone-surrogate"],
)
async def test_data_no_database_can_hold_is_refused_for_good(store: Store, bad: Reading) -> None:
    await store.add_device(DeviceRecord("dev-1", 1, "h"))
    with pytest.raises(StoreRejectedError):
        await store.append_readings([reading(seq=1), bad])
    await store.append_readings([reading(seq=2)])  # the store goes on
    assert [r.seq for r in await store.query_readings("dev-1", None, None, 10)] == [2]


async def test_nul_in_a_name_is_stored_or_refused_never_a_transient_error(store: Store) -> None:
    await store.add_device(DeviceRecord("dev-1", 1, "h"))
    try:  # SQLite and memory keep it; PostgreSQL's JSONB cannot hold \u0000
        await store.append_readings([reading(name="t\x00")])
    except StoreRejectedError:
        assert isinstance(store, SqlStore) and store.dialect == "postgresql"


async def test_dead_letters_contract(store: Store) -> None:
    if isinstance(store, MemoryStore):
        dead: SqlDeadLetterStore | MemoryDeadLetterStore = MemoryDeadLetterStore()
    else:
        assert isinstance(store, SqlStore)
        dead = SqlDeadLetterStore(store)
    big = b"\x00\xff" * MAX_PAYLOAD_BYTES
    await dead.add_dead_letters(
        [
            dead_letter("a", "planty/v1/devices/a/telemetry", big, "refused \x00 \ud800", 10),
            dead_letter("b", "t/b", b"{}", "x", 20),
            dead_letter(None, "t/none", b"", "y", 30),
            dead_letter("a", "t/a", b"2", "z", 40),
        ]
    )
    every = await dead.list_dead_letters(None, None, 10)
    assert [d.at_ms for d in every] == [40, 30, 20, 10]  # newest first
    first = every[-1]
    assert first.size == len(big) and len(first.payload) == MAX_PAYLOAD_BYTES
    assert first.payload == big[:MAX_PAYLOAD_BYTES] and "\x00" not in first.error
    assert [d.at_ms for d in await dead.list_dead_letters("a", None, 10)] == [40, 10]
    assert [d.at_ms for d in await dead.list_dead_letters(None, every[1].id, 2)] == [20, 10]
    assert await dead.dead_letter_counts() == {"a": 2, "b": 1, "": 1}
    assert await dead.prune_dead_letters(25, 10) == 2
    assert await dead.dead_letter_counts() == {"a": 1, "": 1}
    assert await dead.purge_dead_letters("a", None) == 1
    assert await dead.purge_dead_letters(None, None) == 1
    assert await dead.list_dead_letters(None, None, 10) == []


async def test_events_and_rule_history_the_store_refuses_go_to_dead_letters(store: Store) -> None:
    """The event log's and the rule history's writers set a refused item aside as a dead
    letter (wired as the gateway wires them: start_events, start_rules), store the rest,
    and a refused event is not reported as a device error (that would be another event)."""
    from contextlib import AsyncExitStack
    from types import SimpleNamespace

    from planty_broker.config import Settings
    from planty_broker.domain.events import NewEvent
    from planty_broker.domain.rules.records import RuleEvent
    from planty_broker.services.bus import Bus, DeviceError
    from planty_broker.services.dead_letters import DeadLetterService
    from planty_broker.services.queue import start_events
    from planty_broker.services.registry import DeviceRegistry
    from planty_broker.services.rules.service import start_rules

    if isinstance(store, MemoryStore):
        port: SqlDeadLetterStore | MemoryDeadLetterStore = MemoryDeadLetterStore()
    else:
        assert isinstance(store, SqlStore)
        port = SqlDeadLetterStore(store)
    await store.add_device(DeviceRecord("dev-1", 1, "h"))
    bus = Bus()
    reported: list[DeviceError] = []
    bus.subscribe(DeviceError, reported.append)
    dead = DeadLetterService(port, bus, keep_days=30)
    svc = SimpleNamespace(
        store=store, bus=bus, settings=Settings(), dead_letters=dead, events=None,
        commands=None, registry=DeviceRegistry(store, bus, lambda s: s),
    )
    at = 1_764_000_000_000
    async with AsyncExitStack() as stack:
        events = await start_events(svc, stack)  # type: ignore[arg-type]
        svc.events = events
        rules = await start_rules(svc, stack)
        assert rules is not None
        await events.writer.write(NewEvent(2**63, "device_error", "dev-1", {"n": 1}))
        await events.writer.write(NewEvent(at, "device_error", "dev-1", {"n": 2}))
        await rules.engine.history.write(RuleEvent("r-1", "dev-1", 2**63, "fired"))
        await rules.engine.history.write(RuleEvent("r-1", "dev-1", at, "fired"))
        if isinstance(store, MemoryStore) and not events.writer.dead_lettered:
            pytest.skip("the memory store holds integers past 64 bits")
        assert (events.writer.dead_lettered, rules.engine.history.dead_lettered) == (1, 1)
        letters = sorted(await dead.list(), key=lambda d: d.topic)
        assert [(d.device_id, d.topic) for d in letters] == [
            ("dev-1", "events/device_error"),
            ("dev-1", "rules/r-1/history"),
        ]
        assert b"9223372036854775808" in letters[0].payload  # the item, as JSON
        assert all("refused" in d.error.lower() or "overflow" in d.error.lower()
                   or "range" in d.error.lower() for d in letters), [d.error for d in letters]
        # Only the rule history's is reported (and so appended to the event log).
        assert [e.message.split(":")[0] for e in reported] == ["set aside on rules/r-1/history"]
        stored = await store.read_events(0, 100)
        assert [e.data.get("n") for e in stored if e.type == "device_error"][:1] == [2]
