"""`CommandService.ack_now`: the plain acks are taken without a worker, and `done` (which
sends the PUBACK) runs only once the outcome is committed; the other cases are left to
`handle_ack` (issue 17). Memory store, fake link (tests/unit/commands/harness.py)."""

from __future__ import annotations

import asyncio

import pytest

from planty_broker.domain.commands import CommandState
from planty_broker.services.bus import AckReceived
from planty_broker.services.registry import now_ms
from tests.unit.commands.harness import harness

pytestmark = pytest.mark.asyncio(loop_scope="session")


def ack(device_id: str, cid: str, ok: bool = True) -> AckReceived:
    return AckReceived(device_id, cid, ok, {"on": ok}, None if ok else "jammed", now_ms())


async def test_a_live_command_is_acked_and_done_follows_the_commit() -> None:
    async with harness() as h:
        await h.device("dev-1")
        recs = [await h.service.submit("dev-1", "pump.on", {"seconds": i + 1}) for i in range(5)]
        await h.link.wait_sent(5)
        done: list[str] = []
        for rec in recs:
            assert h.service.ack_now(ack("dev-1", rec.id), lambda c=rec.id: done.append(c))
        assert done == []  # nothing acknowledged before the commit
        for _ in range(200):
            if len(done) == 5:
                break
            await asyncio.sleep(0.01)
        assert done == [r.id for r in recs]  # every one, in order
        for rec in recs:
            stored = await h.store.get_command(rec.id)
            assert stored is not None and stored.state is CommandState.ACKED
        events = [e.data["state"] for e in await h.store.read_events(0, 100, ["command"])]
        assert events.count("acked") == 5


async def test_the_other_cases_are_left_to_handle_ack() -> None:
    async with harness() as h:
        await h.device("dev-1")
        await h.device("dev-2")
        read = await h.service.submit("dev-1", "read")
        pump = await h.service.submit("dev-1", "pump.on", {"seconds": 1})
        await h.link.wait_sent(2)
        never = lambda: pytest.fail("done ran for an ack left to handle_ack")  # noqa: E731
        assert not h.service.ack_now(ack("dev-1", read.id), never)  # readings stored first
        assert not h.service.ack_now(ack("dev-1", "c-unknown"), never)
        assert not h.service.ack_now(ack("dev-2", pump.id), never)  # someone else's id
        live = h.service.outbox.live[pump.id]
        live.closing = True  # being ended (e.g. failed) meanwhile
        assert not h.service.ack_now(ack("dev-1", pump.id), never)
        live.closing = False
        assert (await h.service.require(pump.id)).state is CommandState.SENT


async def test_a_ping_ack_is_taken_at_once() -> None:
    async with harness() as h:
        await h.device("dev-1")
        done: list[int] = []
        assert h.service.ack_now(ack("dev-1", "p-1"), lambda: done.append(1))
        assert done == [1]
