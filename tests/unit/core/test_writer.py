"""Group commit: durability before return, batching, and holding items while the store fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

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
            raise OSError("database or disk is full")
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
