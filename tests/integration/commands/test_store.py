"""The outbox and event log stores: same behaviour on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from planty_broker.domain import commands as cmds
from planty_broker.domain.commands import CommandRecord, CommandState
from planty_broker.domain.events import KeepRule, NewEvent
from planty_broker.domain.models import (
    DeviceRecord,
    PresenceCause,
    PresenceState,
    PresenceTransition,
    Reading,
)
from planty_broker.protocol import Ack
from planty_broker.storage.sql import SqlStore
from planty_broker.storage.sql_engine import normalize_url
from tests.integration.storage.conftest import StoreFactory

pytestmark = pytest.mark.asyncio(loop_scope="session")


def rec(
    cid: str, device: str = "dev-1", created: int = 1_000, action: str = "pump.on"
) -> CommandRecord:
    return CommandRecord(cid, device, action, {"seconds": 5}, created, created + 60_000)


async def devices(store: Any, *ids: str) -> None:
    for i in ids:
        await store.add_device(DeviceRecord(i, 0, "h"))


async def test_a_command_life_is_rows_history_and_events(store: Any) -> None:
    await devices(store, "dev-1")
    q = cmds.queued(rec("c-1"))
    s = cmds.sent(q.record, 2_000)
    a = cmds.acked(s.record, Ack("c-1", True, {"on": True, "n": [1, 2]}), 2_050)
    await store.apply_command_changes([q, s])  # new + update in one batch
    await store.apply_command_changes([a])
    got = await store.get_command("c-1")
    assert got == a.record
    assert [(t.state, t.at_ms, t.attempt) for t in await store.command_history("c-1")] == [
        ("queued", 1_000, 0),
        ("sent", 2_000, 1),
        ("acked", 2_050, 1),
    ]
    events = await store.read_events(0, 10, ["command"])
    assert [(e.data["state"], e.device_id, e.at_ms) for e in events] == [
        ("queued", "dev-1", 1_000),
        ("sent", "dev-1", 2_000),
        ("acked", "dev-1", 2_050),
    ]
    assert events[0].data["args"] == {"seconds": 5} and events[2].data["result"]["n"] == [1, 2]


async def test_listing_and_resuming(store: Any) -> None:
    await devices(store, "dev-1", "dev-2")
    changes = [
        cmds.queued(rec(f"c-{i}", "dev-1" if i % 2 else "dev-2", 1_000 + i)) for i in range(6)
    ]
    await store.apply_command_changes(changes)
    done = cmds.ended(changes[0].record, CommandState.CANCELLED, 9_000, "by server")
    sent = cmds.sent(changes[1].record, 9_000)
    await store.apply_command_changes([done, sent])
    assert [c.id for c in await store.list_commands("dev-1", None, 10)] == ["c-5", "c-3", "c-1"]
    assert [c.id for c in await store.list_commands(None, ["cancelled"], 10)] == ["c-0"]
    assert [c.id for c in await store.list_commands(None, None, 2)] == ["c-5", "c-4"]
    active = await store.active_commands()
    assert [c.id for c in active] == ["c-1", "c-2", "c-3", "c-4", "c-5"]  # oldest first
    assert active[0].state is CommandState.SENT and active[0].last_sent_ms == 9_000


async def test_changes_of_a_removed_device_are_dropped_and_the_rest_kept(store: Any) -> None:
    await devices(store, "dev-1", "dev-2")
    await store.apply_command_changes([cmds.queued(rec("c-1", "dev-1"))])
    await store.remove_device("dev-1")
    assert await store.get_command("c-1") is None  # cascade
    await store.apply_command_changes(
        [cmds.sent(rec("c-1", "dev-1"), 2_000), cmds.queued(rec("c-2", "dev-2"))]
    )
    assert await store.get_command("c-1") is None
    assert (await store.get_command("c-2")) is not None


async def test_pruning_old_final_commands(store: Any) -> None:
    await devices(store, "dev-1")
    q1, q2 = cmds.queued(rec("c-1")), cmds.queued(rec("c-2"))
    await store.apply_command_changes(
        [q1, q2, cmds.ended(q1.record, CommandState.CANCELLED, 5_000, "x")]
    )
    assert await store.prune_commands(6_000, 100) == 1
    assert await store.get_command("c-1") is None and await store.command_history("c-1") == []
    assert await store.get_command("c-2") is not None  # active: never pruned


async def test_event_log_reads_bounds_consumers_and_prunes(store: Any) -> None:
    await devices(store, "dev-1")
    await store.append_readings(
        [Reading("dev-1", i, 100 + i, 200 + i, {"t": float(i)}) for i in range(3)]
    )
    await store.append_presence(
        [PresenceTransition("dev-1", PresenceState.ONLINE, 300, PresenceCause.STATUS_ONLINE)]
    )
    await store.append_events([NewEvent(400, "device_error", None, {"kind": "bad_topic"})])
    events = await store.read_events(0, 10)
    assert [(e.id, e.type) for e in events] == [
        (1, "reading"),
        (2, "reading"),
        (3, "reading"),
        (4, "presence"),
        (5, "device_error"),
    ]
    assert (
        events[1].data == {"seq": 1, "ts_ms": 101, "readings": {"t": 1.0}}
        and events[1].at_ms == 201
    )
    assert [e.id for e in await store.read_events(2, 2)] == [3, 4]
    assert await store.event_id_before(300) == 3
    b = await store.event_bounds()
    assert (b.first_id, b.last_id, b.pruned_through, b.kept) == (1, 5, 0, 5)
    c = await store.set_consumer_cursor("srv", 1, 1_000)
    assert (c.cursor, c.dropped, c.created_ms) == (1, 0, 1_000)
    assert (await store.set_consumer_cursor("srv", 2, 2_000)).updated_ms == 2_000
    await store.set_consumer_cursor("other", 4, 2_000)
    r = await store.prune_events(3)
    assert (r.deleted, r.through_id, r.dropped_by_consumer, r.unconfirmed) == (3, 3, {"srv": 1}, 1)
    srv = await store.get_consumer("srv")
    assert srv is not None and srv.dropped == 1
    b = await store.event_bounds()
    assert (b.first_id, b.last_id, b.pruned_through, b.deleted_unconfirmed) == (4, 5, 3, 1)
    assert [c.name for c in await store.list_consumers()] == ["other", "srv"]
    assert await store.delete_consumer("srv") and not await store.delete_consumer("srv")
    await store.prune_events(5)
    await store.append_events([NewEvent(500, "device_error", None, {})])
    assert [e.id for e in await store.read_events(0, 10)] == [6]  # never an id reused


async def test_prune_spares_security_events_until_their_own_retention(store: Any) -> None:
    keep = KeepRule(("credential",), 1_000)
    await store.append_events(
        [
            NewEvent(500, "credential", "d", {"event": "old"}),
            NewEvent(1_500, "credential", "d", {"event": "new"}),
            NewEvent(1_600, "device_error", None, {}),
        ]
    )
    await store.set_consumer_cursor("srv", 0, 0)
    r = await store.prune_events(3, keep)
    # the old credential event and the error go; the recent credential event stays
    assert (r.deleted, r.unconfirmed, r.dropped_by_consumer) == (2, 2, {"srv": 2})
    assert [e.data.get("event") for e in await store.read_events(0, 10)] == ["new"]
    assert (await store.event_bounds()).pruned_through == 3
    r = await store.prune_events(3, KeepRule(("credential",), 2_000))  # now it has expired
    assert r.deleted == 1 and await store.read_events(0, 10) == []


async def test_ids_are_not_reused_after_a_full_prune_and_a_reopen(
    store_factory: StoreFactory,
) -> None:
    s = store_factory()
    await s.open()
    try:
        bounds = await s.event_bounds()
        base = bounds.last_id
        await s.append_events([NewEvent(1, "device_error", None, {}) for _ in range(3)])
        await s.prune_events(base + 3)
    finally:
        await s.close()
    s = store_factory()
    await s.open()
    try:
        await s.append_events([NewEvent(2, "device_error", None, {})])
        [e] = await s.read_events(base, 10)
        assert e.id == base + 4
    finally:
        await s.close()


# send leases (issue 15: several gateway instances, one sender per command) --------


async def test_a_send_lease_is_granted_renewed_refused_and_taken_over_once_expired(
    store: Any, store_factory: StoreFactory
) -> None:
    await devices(store, "dev-1")
    await store.apply_command_changes([cmds.queued(rec("c-1")), cmds.queued(rec("c-2"))])
    other = store_factory()
    if other is not store:
        await other.open()
    try:
        got = await store.lease_commands(["c-1", "c-2", "c-404"], "gw-a", 1_000, 11_000)
        assert got.granted == {"c-1", "c-2"} and not got.held_until  # c-404: no such command
        mine = await store.lease_commands(["c-1"], "gw-a", 5_000, 15_000)  # a re-send renews
        assert mine.granted == {"c-1"}
        # Another instance (a second handle on the same store) is refused while it holds...
        theirs = await other.lease_commands(["c-1", "c-2"], "gw-b", 12_000, 22_000)
        assert theirs.granted == {"c-2"}  # c-2's lease (until 11,000) has expired
        assert dict(theirs.held_until) == {"c-1": 15_000}
        # ...and the first instance has lost c-2 to it: it must not send it any more.
        back = await store.lease_commands(["c-2"], "gw-a", 13_000, 23_000)
        assert not back.granted and dict(back.held_until) == {"c-2": 22_000}
        late = await other.lease_commands(["c-1"], "gw-b", 15_001, 25_001)
        assert late.granted == {"c-1"}  # gw-a's lease ran out: gw-b takes it over
    finally:
        if other is not store:
            await other.close()


async def test_two_instances_leasing_the_same_commands_at_once_split_them(
    store: Any, store_factory: StoreFactory
) -> None:
    await devices(store, "dev-1")
    ids = [f"c-{i}" for i in range(50)]
    await store.apply_command_changes([cmds.queued(rec(c, created=i)) for i, c in enumerate(ids)])
    other = store_factory()
    if other is not store:
        await other.open()
    try:
        for round_ in range(5):
            now = 1_000 + round_ * 20_000  # every earlier lease has expired
            a, b = await asyncio.gather(
                store.lease_commands(ids, f"gw-a{round_}", now, now + 10_000),
                other.lease_commands(ids, f"gw-b{round_}", now, now + 10_000),
            )
            assert not a.granted & b.granted  # never both
            assert a.granted | b.granted <= set(ids)
            refused_a = set(ids) - a.granted
            # a refused id is held by the other (or was being leased by it at that moment)
            assert refused_a <= b.granted | set(a.held_until)
    finally:
        if other is not store:
            await other.close()


async def test_leases_go_with_their_commands(store: Any) -> None:
    await devices(store, "dev-1", "dev-2")
    await store.apply_command_changes([cmds.queued(rec("c-1")), cmds.queued(rec("c-2", "dev-2"))])
    assert (await store.lease_commands(["c-1", "c-2"], "gw-a", 1_000, 9_000)).granted == {
        "c-1",
        "c-2",
    }
    await store.remove_device("dev-2")  # its commands and their leases go
    assert not (await store.lease_commands(["c-2"], "gw-b", 2_000, 9_000)).granted


@pytest.mark.integration
async def test_a_lease_row_locked_by_another_instance_is_skipped_not_waited_for(
    pg_url: str,
) -> None:
    """PostgreSQL: `FOR UPDATE SKIP LOCKED`. While another instance's transaction holds the
    lease row, leasing it answers at once (refused, holder unknown) instead of queueing
    behind that transaction; the other rows of the batch are granted."""
    dev, one, two = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("dev", "skip1", "skip2"))
    async with SqlStore(pg_url) as store:
        await devices(store, dev)
        await store.apply_command_changes([cmds.queued(rec(one, dev)), cmds.queued(rec(two, dev))])
        assert (await store.lease_commands([one], "gw-a", 1_000, 2_000)).granted
        engine = sa.create_engine(normalize_url(pg_url))
        try:
            with engine.connect() as other:
                other.execute(
                    sa.text("SELECT 1 FROM command_leases WHERE command_id = :id FOR UPDATE"),
                    {"id": one},
                )
                async with asyncio.timeout(10):  # without SKIP LOCKED this waits forever
                    got = await store.lease_commands([one, two], "gw-b", 3_000, 9_000)
                assert got.granted == {two} and not got.held_until
                other.rollback()
            again = await store.lease_commands([one], "gw-b", 3_000, 9_000)
            assert again.granted == {one}  # free again once that transaction ended
        finally:
            engine.dispose()
