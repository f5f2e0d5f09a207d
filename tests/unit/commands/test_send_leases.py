"""Send leases (issue 15): with several gateway instances on one store, a command is sent by
the instance holding its lease; another one sends it only once that lease has ended."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from planty_broker.domain.commands import CommandState
from planty_broker.protocol import decode_command
from planty_broker.services.registry import now_ms
from planty_broker.storage.memory import MemoryStore
from tests.unit.commands.harness import Harness, harness

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_second_instance_waits_for_the_first_ones_lease_then_sends_the_same_id() -> None:
    store = MemoryStore()
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(harness(store, "gw-a", ack_timeout_s=1.0))
        await a.device("dev-1", online=False)
        rec = await a.service.submit("dev-1", "pump.on", {"seconds": 5})
        # a leased and sent it, and was killed before its `sent` row was committed: the store
        # says queued, the lease says a holds it for one ack timeout.
        now = now_ms()
        assert (await store.lease_commands([rec.id], "gw-a", now, now + 1_000)).granted
        await a.service.stop()
        b = await stack.enter_async_context(harness(store, "gw-b", ack_timeout_s=1.0))
        b.online("dev-1")  # b would send it at once...
        while b.service.outbox.dispatcher.lease_refused == 0:
            await asyncio.sleep(0.01)  # ...asks for the lease and is refused: a holds it
        assert b.link.sent == []
        [cmd] = await b.link.wait_sent(1)  # once a's lease has ended
        assert cmd.id == rec.id  # the same id: the device deduplicates a second delivery
        assert store._q.leases[rec.id][0] == "gw-b"
        await b.ack("dev-1", rec.id)
        assert (await b.service.require(rec.id)).state is CommandState.ACKED
        assert a.link.sent == []


async def test_two_live_instances_send_a_command_only_while_holding_its_lease() -> None:
    """Split brain (an instance that lost the PostgreSQL session lease and has not noticed
    yet): both try every re-send of one command; each publish happens while its sender holds
    the command's lease in the store, which one owner holds at a time (the store tests)."""
    store = MemoryStore()
    seen: list[tuple[str, bool]] = []  # (sender, it held the lease at that publish)

    def watch(h: Harness, me: str) -> None:
        publish = h.link.publish

        async def checked(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
            owner, until = store._q.leases[decode_command(payload).id]
            seen.append((me, owner == me and until >= now_ms()))
            await publish(topic, payload, qos, retain)

        h.link.publish = checked  # type: ignore[method-assign]

    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(harness(store, "gw-a", ack_timeout_s=0.2))
        watch(a, "gw-a")
        await a.device("dev-1", online=False)
        rec = await a.service.submit("dev-1", "lamp.on")
        b = await stack.enter_async_context(harness(store, "gw-b", ack_timeout_s=0.2))
        watch(b, "gw-b")  # b resumed the queued command from the store
        a.online("dev-1")
        b.online("dev-1")  # both send it now, and re-send it at each ack timeout
        await a.service.wait(rec.id, 5)  # no ack: each fails it after its attempts
        await b.service.wait(rec.id, 5)
        assert len(seen) >= 3 and all(held for _, held in seen), seen


async def test_one_gateway_takes_no_leases() -> None:
    store = MemoryStore()
    async with harness(store) as h:
        await h.device("dev-1")
        rec = await h.service.submit("dev-1", "pump.on", {"seconds": 5})
        await h.link.wait_sent(1)
        await h.ack("dev-1", rec.id)
        assert store._q.leases == {}  # no store round trip per send on a single gateway
