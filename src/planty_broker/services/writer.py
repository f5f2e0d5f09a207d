"""Group commit: many concurrent writers, one transaction per batch, each awaits durability.

`writer.submit(item, done)` calls `done()` only once the batch holding `item`
is committed, so the MQTT PUBACK sent from it is honest; `await writer.write(item)`
is the same for async callers. `after_commit(items)` runs once per committed
batch (before the callbacks) for the bookkeeping that must follow durability. If the store is down
(disk full, database gone) the batch is kept and retried with backoff: callers
wait (which back-pressures the MQTT server through unacked messages) and
nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from planty_broker.backoff import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")


class BatchWriter(Generic[T]):
    """Collects items and writes them in batches with one call to `sink`."""

    def __init__(
        self,
        sink: Callable[[Sequence[T]], Awaitable[None]],
        *,
        max_batch: int = 500,
        max_wait_ms: float = 5.0,
        name: str = "writer",
        after_commit: Callable[[Sequence[T]], None] | None = None,
    ) -> None:
        self._sink = sink
        self._after_commit = after_commit
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._name = name
        self._items: list[T] = []
        self._callbacks: list[Callable[[], None]] = []
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items_written = 0
        self.last_commit_s = 0.0
        self.failing_since: float | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-flush")

    async def stop(self) -> None:
        """Flush what is pending, then stop."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._items:
            await self._flush_once()

    def pending(self) -> int:
        return len(self._items)

    def submit(self, item: T, done: Callable[[], None]) -> None:
        """Queue `item`; `done()` is called once it is committed (the hot path: no future)."""
        self._items.append(item)
        self._callbacks.append(done)
        if len(self._items) == 1:
            self._wakeup.set()
        if len(self._items) >= self._max_batch:
            self._full.set()

    async def write(self, item: T) -> None:
        """Queue `item` and return once it is committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not fut.done():
                fut.set_result(None)

        self.submit(item, done)
        await fut

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if self._max_wait_s > 0 and len(self._items) < self._max_batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._max_wait_s)
            await self._flush_once()

    async def _flush_once(self) -> None:
        items, callbacks = self._items[: self._max_batch], self._callbacks[: self._max_batch]
        del self._items[: len(items)], self._callbacks[: len(callbacks)]
        if not self._items:
            self._wakeup.clear()
        if len(self._items) < self._max_batch:
            self._full.clear()
        if not items:
            return
        backoff = Backoff(0.1, 5.0)
        while True:
            started = time.perf_counter()
            try:
                await self._sink(items)
            except asyncio.CancelledError:
                self._items[:0], self._callbacks[:0] = items, callbacks
                self._wakeup.set()
                raise
            except Exception as exc:
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.error(
                        "%s: cannot store %d item(s): %s; holding them and retrying "
                        "(nothing is acknowledged to devices until this succeeds)",
                        self._name,
                        len(items),
                        exc,
                    )
                await backoff.sleep()
                continue
            if self.failing_since is not None:
                log.warning(
                    "%s: store is writable again after %.1f s",
                    self._name,
                    time.monotonic() - self.failing_since,
                )
                self.failing_since = None
            self.last_commit_s = time.perf_counter() - started
            break
        self.batches += 1
        self.items_written += len(items)
        if self._after_commit is not None:
            try:
                self._after_commit(items)
            except Exception:
                log.exception("%s: after-commit bookkeeping failed", self._name)
        for done in callbacks:
            try:
                done()
            except Exception:
                log.exception("%s: commit callback failed", self._name)
