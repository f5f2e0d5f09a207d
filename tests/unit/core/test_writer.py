"""Group commit: durability before return, batching, and holding items while the store fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from planty_broker.ports.store import StoreRejectedError, StoreUnavailableError
from planty_broker.services.writer import BatchWriter

pytestmark = pytest.mark.asyncio(loop_scope="session")


class FlakySink:
    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.failures = failures
        self.calls = 0

    async def __call__(self, items: Sequence[int]) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError("database or disk is full")
        self.batches.append(list(items))


async def test_concurrent_writes_share_batches_and_return_after_commit() -> None:
    sink = FlakySink()
    w: BatchWriter[int] = BatchWriter(sink, max_batch=50, max_wait_ms=5)
    await w.start()
    await asyncio.gather(*(w.write(i) for i in range(200)))
    # every write has returned, so every item is in a committed batch, in order
    assert [i for b in sink.batches for i in b] == list(range(200))
    assert len(sink.batches) <= 8 and max(len(b) for b in sink.batches) <= 50
    await w.stop()


async def test_write_many_shares_batches_and_returns_after_every_commit() -> None:
    """Credential events for a fleet's logins: one call, a few batches, not one per item."""
    sink = FlakySink(failures=1)  # a failing first commit is held and retried, nothing lost
    w: BatchWriter[int] = BatchWriter(sink, max_batch=100, max_wait_ms=5)
    await w.start()
    await w.write_many(list(range(250)))
    assert [i for b in sink.batches for i in b] == list(range(250))
    assert len(sink.batches) == 3
    await w.write_many([])  # nothing: returns at once
    await w.stop()


async def test_store_failure_holds_items_and_retries_without_loss() -> None:
    sink = FlakySink(failures=3)
    w: BatchWriter[int] = BatchWriter(sink, max_batch=10, max_wait_ms=1)
    await w.start()
    task = asyncio.gather(*(w.write(i) for i in range(25)))
    done, _ = await asyncio.wait({task}, timeout=0.05)
    assert not done  # writers wait while the store fails: nothing is acknowledged
    await asyncio.wait_for(task, 5)
    assert sorted(i for b in sink.batches for i in b) == list(range(25))
    assert sink.calls >= 3 + 3 and w.failing_since is None
    await w.stop()


async def test_stop_flushes_pending() -> None:
    sink = FlakySink()
    w: BatchWriter[int] = BatchWriter(sink, max_batch=1000, max_wait_ms=10_000)
    await w.start()
    t = asyncio.ensure_future(w.write(7))
    await asyncio.sleep(0.01)
    await w.stop()
    await t
    assert sink.batches == [[7]]


class PoisonSink:
    """Refuses for good any batch holding a negative number; fails transiently `outage` times."""

    def __init__(self, outage: int = 0) -> None:
        self.stored: list[int] = []
        self.outage = outage
        self.calls = 0

    async def __call__(self, items: Sequence[int]) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.outage:
            self.outage -= 1
            raise StoreUnavailableError("database gone")
        if any(i < 0 for i in items):
            raise StoreRejectedError("integer out of range")
        self.stored.extend(items)


async def test_a_poison_item_is_bisected_out_dead_lettered_and_the_rest_stored() -> None:
    sink = PoisonSink()
    letters: list[tuple[int, str]] = []

    async def dead(item: int, source: bytes | None, exc: Exception) -> None:
        letters.append((item, type(exc).__name__))

    w: BatchWriter[int] = BatchWriter(sink, max_batch=64, max_wait_ms=1, dead_letter=dead)
    await w.start()
    items = [*range(30), -1, *range(30, 60), -2]
    await asyncio.wait_for(asyncio.gather(*(w.write(i) for i in items)), 5)
    assert sorted(sink.stored) == list(range(60))  # every good one, exactly once
    assert sorted(letters) == [(-2, "StoreRejectedError"), (-1, "StoreRejectedError")]
    assert w.dead_lettered == 2 and w.splits > 0 and w.failing_since is None
    await w.stop()


async def test_unclassified_errors_are_set_aside_too_never_retried_forever() -> None:
    async def sink(items: Sequence[int]) -> None:
        if 13 in items:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")

    w: BatchWriter[int] = BatchWriter(sink, max_batch=10, max_wait_ms=1)  # no dead letter sink
    await w.start()
    await asyncio.wait_for(asyncio.gather(*(w.write(i) for i in range(20))), 5)
    assert w.dead_lettered == 1 and w.items_written == 19
    await w.stop()


async def test_transient_failure_holds_everything_and_dead_letters_nothing() -> None:
    sink = PoisonSink(outage=4)
    letters: list[int] = []

    async def dead(item: int, source: bytes | None, exc: Exception) -> None:
        letters.append(item)

    w: BatchWriter[int] = BatchWriter(sink, max_batch=8, max_wait_ms=1, dead_letter=dead)
    await w.start()
    writes = asyncio.gather(*(w.write(i) for i in range(20)))
    while w.failing_since is None:
        await asyncio.sleep(0.001)
    while sink.outage:  # the store is down: nothing is acknowledged meanwhile
        assert not writes.done() and sink.stored == []
        await asyncio.sleep(0.01)
    await asyncio.wait_for(writes, 10)
    assert sorted(sink.stored) == list(range(20)) and letters == [] and w.dead_lettered == 0
    await w.stop()


async def test_dead_letter_store_down_holds_the_item_until_it_is_kept() -> None:
    sink = PoisonSink()
    outage = [3]
    letters: list[int] = []

    async def dead(item: int, source: bytes | None, exc: Exception) -> None:
        if outage[0]:
            outage[0] -= 1
            raise StoreUnavailableError("database gone")
        letters.append(item)

    w: BatchWriter[int] = BatchWriter(sink, max_batch=8, max_wait_ms=1, dead_letter=dead)
    await w.start()
    await asyncio.wait_for(asyncio.gather(*(w.write(i) for i in (1, -1, 2))), 10)
    assert letters == [-1] and sorted(sink.stored) == [1, 2]
    await w.stop()


async def test_stop_during_a_commit_writes_nothing_twice() -> None:
    """A commit handed to the store completes whatever happens to its caller: stop() lets it
    finish instead of cancelling it and writing its items again (issue 12)."""
    entered, release = asyncio.Event(), asyncio.Event()
    written: list[int] = []

    async def commit(items: Sequence[int]) -> None:
        entered.set()
        await release.wait()
        written.extend(items)

    async def slow_sink(items: Sequence[int]) -> None:
        # As the store's worker thread: a cancelled caller does not stop the commit.
        await asyncio.shield(asyncio.ensure_future(commit(items)))

    w: BatchWriter[int] = BatchWriter(slow_sink, max_batch=3, max_wait_ms=0)
    await w.start()
    acked: list[int] = []
    for i in range(7):
        w.submit(i, lambda i=i: acked.append(i))
    await entered.wait()
    stopping = asyncio.create_task(w.stop())
    await asyncio.sleep(0.01)
    assert not stopping.done()  # it waits for the commit in flight
    release.set()
    await asyncio.wait_for(stopping, 5)
    assert written == list(range(7))
    assert acked == list(range(7))


async def test_after_commit_sees_only_what_the_sink_stored() -> None:
    """A sink that skips duplicates returns what it stored: only that is after_commit's,
    while every item is acknowledged."""
    seen: list[int] = []

    async def sink(items: Sequence[int]) -> list[int]:
        return [i for i in items if i % 2 == 0]

    w: BatchWriter[int] = BatchWriter(sink, max_batch=10, max_wait_ms=1, after_commit=seen.extend)
    await w.start()
    await asyncio.gather(*(w.write(i) for i in range(6)))
    await w.stop()
    assert seen == [0, 2, 4]


async def test_items_that_waited_for_a_commit_go_at_once_not_after_max_wait() -> None:
    """Group commit: what came in while a batch was being written is written right after
    it; `max_wait_ms` (a minute here) only gathers a batch when the writer was idle."""
    release = asyncio.Event()
    batches: list[list[int]] = []

    async def sink(items: Sequence[int]) -> None:
        batches.append(list(items))
        if len(batches) == 1:
            await release.wait()  # the first commit is slow

    w: BatchWriter[int] = BatchWriter(sink, max_batch=3, max_wait_ms=60_000)
    await w.start()
    first = asyncio.gather(*(w.write(i) for i in range(3)))  # a full batch goes at once
    while not batches:
        await asyncio.sleep(0)
    second = asyncio.gather(w.write(3), w.write(4))  # arrive during the first commit
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 30)  # far less than max_wait
    assert batches == [[0, 1, 2], [3, 4]]
    await w.stop()
