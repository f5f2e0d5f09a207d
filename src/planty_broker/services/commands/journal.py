"""Group commit for command changes, in order, with "lazy" items that ride the next commit.

`submit(changes, done)` queues changes and calls `done()` once they are committed;
items are committed strictly in submission order (a command's `queued` row always
lands before its `sent` or `acked` row). A lazy submit (the `sent` row after a
publish) does not start a commit by itself: it is written with the next eager one
(usually the ack a few ms later) or after `lazy_wait_s`, so the common round trip
costs two commits (queued, acked) and not three. Losing a lazy row in a crash is
harmless: the command is then `queued` in the store and is sent again with the
same id, which the device deduplicates. A store that is unavailable (transient) is
retried with backoff, holding everything (nothing acknowledged meanwhile). A batch the
store refuses for good (e.g. two instances racing to create one command id) is
committed again submit by submit; a submit that still fails is set aside as a dead
letter and its callback runs, so the journal never wedges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from planty_broker.backoff import Backoff
from planty_broker.domain.commands import CommandChange
from planty_broker.services.writer import is_transient
from planty_broker.tasks import spawn, wait_event

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[CommandChange]], Awaitable[None]]
DeadLetterSink = Callable[[Sequence[CommandChange], Exception], Awaitable[None]]


def _nothing() -> None:
    return None


class Journal:
    """Ordered group commit of `CommandChange`s to one sink (the store)."""

    def __init__(
        self,
        sink: Sink,
        *,
        max_batch: int = 1000,
        lazy_wait_s: float = 0.2,
        dead_letter: DeadLetterSink | None = None,
    ) -> None:
        self._sink = sink
        self._dead_letter = dead_letter
        self._last_refusal: Exception = RuntimeError("refused")
        self.dead_lettered = 0  # changes set aside because the store refuses them for good
        self.last_error = ""  # the last transient failure, for readiness
        self._max_batch = max_batch
        self._lazy_wait_s = lazy_wait_s
        self._items: list[CommandChange] = []
        self._callbacks: list[tuple[int, Callable[[], None]]] = []  # (items up to, done)
        self._eager = asyncio.Event()
        self._lazy = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.items_written = 0
        self.failing_since: float | None = None

    async def start(self) -> None:
        self._task = spawn("commands-journal", self._run)

    async def stop(self) -> None:
        """Write what is pending, then stop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._items:
            await self._flush()

    def set_dead_letter(self, sink: DeadLetterSink | None) -> None:
        """Where a submit the store refuses for good goes (None: logged and dropped)."""
        self._dead_letter = sink

    def pending(self) -> int:
        return len(self._items)

    def submit(
        self,
        changes: Sequence[CommandChange],
        done: Callable[[], None] | None = None,
        *,
        lazy: bool = False,
    ) -> None:
        """Queue `changes`; `done()` runs once they are committed."""
        self._items.extend(changes)
        self._callbacks.append((len(self._items), done or _nothing))
        if lazy:
            self._lazy.set()
        else:
            self._eager.set()

    async def write(self, changes: Sequence[CommandChange]) -> None:
        """Queue `changes` and return once they are committed (cancelling does not unqueue)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not fut.done():
                fut.set_result(None)

        self.submit(changes, done)
        await asyncio.shield(fut)

    async def _run(self) -> None:
        while True:
            if not self._eager.is_set():
                if self._lazy.is_set():
                    await wait_event(self._eager, self._lazy_wait_s)
                else:
                    await self._eager.wait()
            await self._flush()

    async def _flush(self) -> None:
        n = min(len(self._items), self._max_batch)
        # Never split one submit's changes across commits: extend to its end.
        ends = [end for end, _ in self._callbacks]
        cut = next((end for end in ends if end >= n), n)
        items = self._items[:cut]
        groups = [(end, cb) for end, cb in self._callbacks if end <= cut]
        del self._items[:cut]
        self._callbacks = [(end - cut, cb) for end, cb in self._callbacks if end > cut]
        if not self._items:
            self._eager.clear()
            self._lazy.clear()
        if not items:  # only barriers (`write([])`): nothing to commit
            for _, cb in groups:
                cb()
            return
        start = 0  # where the first group still in `groups` begins in `items`
        try:
            if await self._commit(items):
                self._committed(len(items), [cb for _, cb in groups])
                return
            # Refused for good: commit submit by submit, setting aside those that fail.
            while groups:
                end, cb = groups[0]
                part = items[start:end]
                if part and await self._commit(part):
                    self._committed(len(part), [])
                elif part:
                    await self._set_aside(part)
                groups.pop(0)
                start = end
                cb()
        except asyncio.CancelledError:
            self._put_back(items[start:], [(end - start, cb) for end, cb in groups])
            raise

    async def _commit(self, items: list[CommandChange]) -> bool:
        """True once committed; False if the store refuses them for good. A transient
        failure is retried with backoff, holding everything."""
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                await self._sink(items)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    if len(items) == 1 or self.failing_since is None:
                        log.warning("commands: the store refused %d change(s): %s", len(items), exc)
                    self._last_refusal = exc
                    return False
                self.last_error = str(exc)[:300]
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.error(
                        "commands: cannot store %d change(s): %s; holding them and retrying "
                        "(acks from devices wait for this)",
                        len(items),
                        exc,
                    )
                await backoff.sleep()
                continue
            if self.failing_since is not None:
                log.warning(
                    "commands: store is writable again after %.1f s",
                    time.monotonic() - self.failing_since,
                )
                self.failing_since = None
            return True

    def _committed(self, n: int, callbacks: list[Callable[[], None]]) -> None:
        self.commits += 1
        self.items_written += n
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.exception("commands: a commit callback failed")

    async def _set_aside(self, part: list[CommandChange]) -> None:
        """One submit's changes the store refuses for good: to the dead letters."""
        self.dead_lettered += len(part)
        exc = self._last_refusal
        if self._dead_letter is None:
            log.error("commands: dropped %d change(s) the store refuses: %s", len(part), exc)
            return
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                await self._dead_letter(part, exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as dl_exc:
                if not is_transient(dl_exc):
                    log.error("commands: could not keep a dead letter (%s): %s", dl_exc, exc)
                    return
                await backoff.sleep()

    def _put_back(
        self, items: list[CommandChange], groups: list[tuple[int, Callable[[], None]]]
    ) -> None:
        """On cancel: what is not committed yet goes back in front, in order."""
        shift = len(items)
        self._items[:0] = items
        self._callbacks = [*groups, *((end + shift, cb) for end, cb in self._callbacks)]
        self._eager.set()


def _chain(callbacks: list[Callable[[], None]]) -> Callable[[], None]:
    def run() -> None:
        for cb in callbacks:
            cb()

    return run
