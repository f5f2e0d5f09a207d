"""Group commit: many concurrent writers, one transaction per batch, each awaits durability.

`writer.submit(item, done)` calls `done()` only once the batch holding `item`
is committed, so the MQTT PUBACK sent from it is honest; `await writer.write(item)`
is the same for async callers. `after_commit(items)` runs once per committed
batch (before the callbacks) for the bookkeeping that must follow durability; when
the sink returns the items it actually stored (a store that skips duplicates), only
those (every item's `done()` still runs: a duplicate is acknowledged too).

Failures are told apart on purpose (errors.py):
- transient (`TransientStoreError`: disk full, database gone, locked): the batch is kept
  and retried with backoff; callers wait (which back-pressures the MQTT server through
  unacked messages) and nothing is dropped or acknowledged;
- permanent (`PermanentStoreError`, or any error that is not a store error: retrying the
  same write cannot succeed): the batch is split in halves (bisect) until the items
  that fail alone are found. Each of those goes to `dead_letter(item, error)` (a dead
  letter table), then its `done()` runs, so one bad item never holds up the others.
  Without a `dead_letter` sink such an item is logged and dropped, counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from planty_broker.backoff import Backoff
from planty_broker.errors import StoreError, TransientStoreError
from planty_broker.tasks import spawn, wait_event

log = logging.getLogger(__name__)

T = TypeVar("T")

# dead_letter(item, its raw source bytes or None, the error)
DeadLetterSink = Callable[[T, bytes | None, Exception], Awaitable[None]]
Done = Callable[[], None]
Work = deque[tuple[list[T], list[Done], list[bytes | None]]]


def is_transient(exc: BaseException) -> bool:
    """Hold and retry (True), or set aside (False). Only the store knows a failure is
    transient: anything else (a refused value, a bug) would fail the same way again."""
    return isinstance(exc, TransientStoreError)


class BatchWriter(Generic[T]):
    """Collects items and writes them in batches with one call to `sink`."""

    def __init__(
        self,
        sink: Callable[[Sequence[T]], Awaitable[Sequence[T] | None]],
        *,
        max_batch: int = 500,
        max_wait_ms: float = 5.0,
        name: str = "writer",
        after_commit: Callable[[Sequence[T]], None] | None = None,
        dead_letter: DeadLetterSink[T] | None = None,
    ) -> None:
        self._sink = sink
        self._after_commit = after_commit
        self._dead_letter = dead_letter
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._name = name
        self._items: list[T] = []
        self._callbacks: list[Done] = []
        self._sources: list[bytes | None] = []  # what each item was decoded from, if given
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items_written = 0
        self.dead_lettered = 0  # items set aside (permanent failure), dead letter or not
        self.splits = 0  # batches bisected after a permanent failure
        self.last_commit_s = 0.0
        self.last_commit_at: float | None = None  # time.monotonic() of the last commit
        self.failing_since: float | None = None  # time.monotonic() of the first failure
        self.last_error = ""  # the last transient failure, for readiness
        self.busy_since = 0.0  # time.monotonic() when items last started to wait
        self._writing = 0  # items taken for the batch being written
        self._stopping = False  # stop(): the loop writes what waits, then returns
    async def start(self) -> None:
        self._task = spawn(f"{self._name}-flush", self._run)

    async def stop(self) -> None:
        """Flush what is pending, then stop. The loop is not cancelled in the middle of a
        write: a commit already handed to the store completes whatever its caller does, so
        requeueing its items would store them twice."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wakeup.set()
        self._full.set()
        try:
            await task
        finally:
            self._stopping = False
        while self._items:  # submitted while the loop was ending
            await self._flush_once()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The flush loop (None when stopped), for health checks."""
        return self._task

    def set_dead_letter(self, sink: DeadLetterSink[T] | None) -> None:
        """Where an item the store refuses for good goes (None: logged and dropped)."""
        self._dead_letter = sink

    def pending(self) -> int:
        return len(self._items)

    def total_pending(self) -> int:
        """Waiting, plus being written now (held while the store fails)."""
        return len(self._items) + self._writing

    def stuck_for(self, now: float) -> float:
        """Seconds items have waited with nothing committed (0 when nothing waits)."""
        if not self._items and not self._writing:
            return 0.0
        return now - max(self.busy_since, self.last_commit_at or 0.0)

    def submit(self, item: T, done: Done, source: bytes | None = None) -> None:
        """Queue `item`; `done()` is called once it is committed (the hot path: no future).
        `source` (the raw message) is what a dead letter keeps if the item is refused."""
        if not self._items and not self._writing:
            self.busy_since = time.monotonic()
        self._items.append(item)
        self._callbacks.append(done)
        self._sources.append(source)
        if len(self._items) == 1:
            self._wakeup.set()
        if len(self._items) >= self._max_batch:
            self._full.set()

    async def write(self, item: T) -> None:
        """Queue `item` and return once it is committed (or set aside as a dead letter)."""
        await self._queued(item)

    async def write_many(self, items: Sequence[T]) -> None:
        """Queue all of `items` at once (they share batches) and return once every one is
        committed or set aside; awaiting `write` for each in turn would cost a commit each."""
        futures = [self._queued(item) for item in items]
        if futures:
            await asyncio.gather(*futures)

    def _queued(self, item: T) -> asyncio.Future[None]:
        """Submit `item`; the future is done once it is committed (or set aside)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not fut.done():
                fut.set_result(None)

        self.submit(item, done)
        return fut

    async def _run(self) -> None:
        backlog = False  # items came in while the last batch was being written
        while not (self._stopping and not self._items):
            await self._wakeup.wait()
            # `max_wait_ms` gathers a batch when the writer was idle; items that waited for a
            # commit already have their batch (and their latency): they go at once
            if self._stopping:
                self._full.set()  # no waiting for a fuller batch
            elif not backlog and self._max_wait_s > 0 and len(self._items) < self._max_batch:
                await wait_event(self._full, self._max_wait_s)
            await self._flush_once()
            backlog = bool(self._items)

    async def _flush_once(self) -> None:
        n = self._max_batch
        items, callbacks, sources = self._items[:n], self._callbacks[:n], self._sources[:n]
        del self._items[:n], self._callbacks[:n], self._sources[:n]
        if not self._items:
            self._wakeup.clear()
        if len(self._items) < self._max_batch:
            self._full.clear()
        if not items:
            return
        # Work list of (items, callbacks) slices, in order; a slice that fails for good is
        # replaced by its two halves. Slices already committed are acknowledged at once.
        work: Work[T] = deque([(items, callbacks, sources)])
        self._writing = len(items)
        try:
            await self._drain(work)
        except asyncio.CancelledError:
            self._requeue(work)
            raise
        finally:
            self._writing = 0

    async def _drain(self, work: Work[T]) -> None:
        backoff = Backoff(0.1, 5.0)
        while work:
            part, dones, srcs = work[0]
            started = time.perf_counter()
            try:
                stored = await self._sink(part)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_transient(exc):
                    self._failing(len(part), exc)
                    await backoff.sleep()
                    continue
                if len(part) > 1:
                    work.popleft()
                    self.splits += 1
                    half = len(part) // 2
                    work.appendleft((part[half:], dones[half:], srcs[half:]))
                    work.appendleft((part[:half], dones[:half], srcs[:half]))
                    continue
                await self._set_aside(part[0], srcs[0], exc)
                work.popleft()
                self._run_callbacks(dones)
                continue
            work.popleft()
            self._recovered()
            self.last_commit_s = time.perf_counter() - started
            self.last_commit_at = time.monotonic()
            backoff.reset()
            self.batches += 1
            self.items_written += len(part)
            if self._after_commit is not None:
                try:
                    self._after_commit(part if stored is None else stored)
                except Exception:
                    log.exception("%s: after-commit bookkeeping failed", self._name)
            self._run_callbacks(dones)

    def _requeue(self, work: Work[T]) -> None:
        """Put what is not written yet back in front, in order (on cancel)."""
        self._items[:0] = [i for part, _, _ in work for i in part]
        self._callbacks[:0] = [c for _, dones, _ in work for c in dones]
        self._sources[:0] = [x for _, _, srcs in work for x in srcs]
        if self._items:
            self._wakeup.set()

    async def _set_aside(self, item: T, source: bytes | None, exc: Exception) -> None:
        """One item that cannot be stored: to the dead letters (holding while *that* store
        is unavailable), else logged and dropped."""
        self.dead_lettered += 1
        if not isinstance(exc, StoreError):  # not classified by the store: show where
            log.error("%s: unexpected error storing one item; set aside", self._name, exc_info=exc)
        if self._dead_letter is None:
            log.error("%s: dropped one item the store refuses: %s", self._name, exc)
            return
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                await self._dead_letter(item, source, exc)
                return
            except asyncio.CancelledError:
                self.dead_lettered -= 1
                raise
            except Exception as dl_exc:
                if not is_transient(dl_exc):
                    log.error(
                        "%s: could not keep a dead letter (%s); dropped the item: %s",
                        self._name,
                        dl_exc,
                        exc,
                    )
                    return
                self._failing(1, dl_exc)
                await backoff.sleep()

    def _failing(self, n: int, exc: Exception) -> None:
        self.last_error = str(exc)[:300]
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            log.error(
                "%s: cannot store %d item(s): %s; holding them and retrying "
                "(nothing is acknowledged to devices until this succeeds)",
                self._name,
                n,
                exc,
            )

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.warning(
                "%s: store is writable again after %.1f s",
                self._name,
                time.monotonic() - self.failing_since,
            )
            self.failing_since = None

    def _run_callbacks(self, callbacks: list[Done]) -> None:
        for done in callbacks:
            try:
                done()
            except Exception:
                log.exception("%s: commit callback failed", self._name)
