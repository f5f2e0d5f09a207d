"""The command journal never wedges: a submit the store refuses for good is set aside (a dead
letter) and its waiter released; the others commit, in order; an unavailable store holds all."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from planty_broker.domain import commands as cmds
from planty_broker.domain.commands import CommandChange, CommandRecord
from planty_broker.ports.store import StoreRejectedError, StoreUnavailableError
from planty_broker.services.commands.journal import Journal

pytestmark = pytest.mark.asyncio(loop_scope="session")


def change(cid: str) -> CommandChange:
    rec = CommandRecord(
        id=cid, device_id="dev-1", action="ping", args={}, created_ms=1, exp_ms=2, origin="api"
    )
    return cmds.queued(rec)


class Store:
    """Refuses any batch holding a command id seen before (a primary key), like a database."""

    def __init__(self, outage: int = 0) -> None:
        self.ids: list[str] = []
        self.outage = outage

    async def __call__(self, changes: Sequence[CommandChange]) -> None:
        await asyncio.sleep(0)
        if self.outage:
            self.outage -= 1
            raise StoreUnavailableError("database gone")
        new = [c.record.id for c in changes]
        if len(set(new)) < len(new) or set(new) & set(self.ids):
            raise StoreRejectedError("duplicate key value violates unique constraint")
        self.ids.extend(new)


async def test_a_refused_submit_is_set_aside_and_the_journal_goes_on() -> None:
    store = Store(outage=2)
    letters: list[list[str]] = []

    async def dead(changes: Sequence[CommandChange], exc: Exception) -> None:
        letters.append([c.record.id for c in changes])

    j = Journal(store, dead_letter=dead)
    await j.start()
    # two "API calls" racing to create c-1 end up in one batch with others around them
    writes = [j.write([change(cid)]) for cid in ("c-0", "c-1", "c-1", "c-2")]
    await asyncio.wait_for(asyncio.gather(*writes), 10)
    assert store.ids == ["c-0", "c-1", "c-2"] and letters == [["c-1"]]
    assert j.dead_lettered == 1 and j.failing_since is None
    await asyncio.wait_for(j.write([change("c-3")]), 5)  # not wedged
    assert store.ids[-1] == "c-3"
    await j.stop()
