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
