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


async def test_listener_closes_that_block_never_starve_the_default_executor() -> None:
    """A library listener's close() joins threads and can block (for good, with a known
    lock re-entry in the library). Detached listeners are closed on threads of their own:
    with closes that all hang, `asyncio.to_thread` still runs at once. (Before, they went
    to the default executor: more hung closes than its workers and every to_thread of the
    process waited for ever; a Firestore test once hung to its timeout so.)"""
    import threading

    release = threading.Event()
    started: list[str] = []

    class StuckListener:
        active = True

        def close(self) -> None:
            started.append(threading.current_thread().name)
            release.wait(30)

    class StuckPort(MemoryFirestore):
        def listen_collection(self, path, on_changes):  # type: ignore[no-untyped-def,override]
            return StuckListener()

    async def handler(snap: Snapshot) -> None:
        pass

    fs = StuckPort()
    lists = [
        SupervisedListener(fs, f"c{i}", handler, collection=True, name=f"l{i}")
        for i in range(40)  # more than any default executor has workers (at most 32)
    ]
    try:
        for lst in lists:
            await lst.start()
        await eventually(lambda: all(lst.attaches for lst in lists), timeout=5)
        for lst in lists:
            await lst.stop()  # each close now hangs
        await eventually(lambda: len(started) == len(lists), timeout=5)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 5) == 42
        assert all(name.startswith("firestore-close-") for name in started)
    finally:
        release.set()


async def test_a_suspended_listener_holds_no_watch_and_resumes_with_the_whole_state() -> None:
    """While Firestore is unreachable the connector suspends its listeners: no watch is
    attached (a library watch re-opens its stream in a tight loop while the server is gone),
    and `resume` attaches a fresh one at once, which delivers what changed meanwhile."""
    fs = MemoryFirestore()
    fs.server_set("b/x/commands/c1", {"v": 1})
    seen: list[tuple[str, int]] = []

    async def handler(snap: Snapshot) -> None:
        seen.extend((ch.doc_id, ch.data["v"]) for ch in snap.changes if ch.data is not None)

    lst = SupervisedListener(
        fs, "b/x/commands", handler, collection=True, name="t", check_every_s=0.01
    )
    async with lst:
        await eventually(lambda: seen == [("c1", 1)], timeout=2)
        lst.suspend()
        attaches = lst.attaches
        assert not lst.active and lst.suspended
        fs.server_set("b/x/commands/c2", {"v": 2})
        await asyncio.sleep(0.1)  # ten supervisor checks: none attaches while suspended
        assert lst.attaches == attaches and not lst.active and ("c2", 2) not in seen
        lst.resume()
        await eventually(lambda: ("c2", 2) in seen, timeout=2)
        assert lst.attaches == attaches + 1 and lst.active and not lst.suspended
