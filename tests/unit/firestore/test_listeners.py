"""Supervised listeners: changes arrive in order on the loop; after a network loss the
listener is re-attached and delivers what changed meanwhile."""

from __future__ import annotations

import asyncio

from planty_broker.northbound.firestore.listeners import SupervisedListener
from planty_broker.northbound.firestore.memory_port import MemoryFirestore
from planty_broker.northbound.firestore.port import Snapshot
from tests.unit.firestore.conftest import eventually


async def test_listener_reattaches_after_a_network_loss() -> None:
    fs = MemoryFirestore()
    fs.server_set("b/x/rules/r1", {"v": 1})
    seen: list[tuple[str, str, int | None]] = []

    async def handler(snap: Snapshot) -> None:
        for ch in snap.changes:
            seen.append((ch.kind.value, ch.doc_id, None if ch.data is None else ch.data["v"]))

    lst = SupervisedListener(
        fs, "b/x/rules", handler, collection=True, name="t", check_every_s=0.02
    )
    async with lst:
        await eventually(lambda: seen == [("added", "r1", 1)], timeout=2)
        fs.server_set("b/x/rules/r1", {"v": 2})
        await eventually(lambda: ("modified", "r1", 2) in seen, timeout=2)

        fs.offline = True  # the stream dies; the server goes on writing
        await eventually(lambda: not lst.active or lst.attaches > 1, timeout=2)
        fs.server_set("b/x/rules/r2", {"v": 3})
        await asyncio.sleep(0.1)
        assert ("added", "r2", 3) not in seen
        fs.offline = False
        await eventually(lambda: ("added", "r2", 3) in seen, timeout=2)
        assert lst.attaches >= 2 and lst.active
        fs.server_set("b/x/rules/r2", {"v": 4})
        await eventually(lambda: ("modified", "r2", 4) in seen, timeout=2)


async def test_a_failing_handler_does_not_stop_the_listener() -> None:
    fs = MemoryFirestore()
    seen: list[str] = []

    async def handler(snap: Snapshot) -> None:
        for ch in snap.changes:
            if ch.doc_id == "boom":
                raise RuntimeError("handler bug")
            seen.append(ch.doc_id)

    async with SupervisedListener(fs, "c", handler, collection=True, name="t") as lst:
        await eventually(lambda: lst.active, timeout=2)
        fs.server_set("c/boom", {})
        fs.server_set("c/fine", {})
        await eventually(lambda: seen == ["fine"], timeout=2)


async def test_a_slow_handler_bounds_the_queue_and_reads_the_whole_state_again() -> None:
    fs = MemoryFirestore()
    release = asyncio.Event()
    seen: dict[str, int] = {}

    async def handler(snap: Snapshot) -> None:
        await release.wait()  # stuck until released: snapshots pile up
        for ch in snap.changes:
            if ch.data is not None:
                seen[ch.doc_id] = ch.data["v"]

    lst = SupervisedListener(
        fs, "c", handler, collection=True, name="t", check_every_s=0.02, max_queued=5
    )
    async with lst:
        await eventually(lambda: lst.active, timeout=2)
        for i in range(50):
            fs.server_set(f"c/d{i % 7}", {"v": i})
            await asyncio.sleep(0)
        await eventually(lambda: lst.overflows >= 1, timeout=2)
        assert lst._queue.qsize() <= 5
        release.set()
        # re-attached: the whole current state arrives, nothing was lost
        want = {f"d{i % 7}": i for i in range(50)}
        await eventually(lambda: seen == want, timeout=3)
        assert lst.attaches >= 2
