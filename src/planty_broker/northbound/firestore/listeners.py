"""Snapshot listeners that survive network losses, delivering changes in order on the loop.

The library's listener calls back on its own thread; `SupervisedListener` hands
each batch of changes to the event loop and runs one async handler at a time,
in arrival order, so handlers need no locks. A supervisor task re-attaches
the listener (with backoff) once its stream has died, e.g. after a network
loss; the fresh listener delivers every document again (as `added`), so
handlers compare with what they last applied and are idempotent.

While Firestore is unreachable the connector suspends its listeners (`suspend`): their
watches are closed, and `resume` attaches fresh ones once a write went through again. A
library watch never gives up by itself: it re-opens its stream in a tight loop for as long
as the server is gone (measured: 10,000 re-opens, each with a thread, in a 40 s outage of
the emulator, five listeners), which starved the machine, the restarting server with it,
and left the listeners to the gRPC channel's growing reconnect delay afterwards.

The hand-over queue is bounded (`MAX_QUEUED` snapshots): if the handler falls that
far behind, the queue is emptied, counted in `overflows`, and the listener is
re-attached, whose first snapshot is the whole current state: nothing is lost,
memory stays bounded. Snapshots of a detached listener are ignored.

Closing a library listener joins its threads and can block for seconds, or for good
(a known lock re-entry in the library's watch). It runs on a daemon thread of its own,
never in the event loop's default executor: there, a few stuck closes would take every
worker (6 on a 2-core machine) and every `asyncio.to_thread` of the process (the
gateway's, a test's) would wait behind them for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable

from planty_broker.backoff import Backoff
from planty_broker.northbound.firestore.port import (
    FirestoreError,
    FirestorePort,
    Listener,
    Snapshot,
)
from planty_broker.tasks import cancel_and_wait, spawn

log = logging.getLogger(__name__)

Handler = Callable[[Snapshot], Awaitable[None]]

CHECK_EVERY_S = 1.0
MAX_BACKOFF_S = 30.0
MAX_QUEUED = 1_000


class SupervisedListener:
    """One collection or document listener; `async with` or start()/stop()."""

    def __init__(
        self,
        port: FirestorePort,
        path: str,
        handler: Handler,
        *,
        collection: bool,
        name: str,
        check_every_s: float = CHECK_EVERY_S,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self._port = port
        self.path = path
        self._handler = handler
        self._collection = collection
        self.name = name
        self._check_every = check_every_s
        self._queue: asyncio.Queue[Snapshot] = asyncio.Queue()
        self._listener: Listener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._max_queued = max_queued
        self._suspended = False
        self._resumed = asyncio.Event()
        self.attaches = 0
        self.delivered = 0
        self.overflows = 0  # times the queue was full: emptied and the listener re-attached

    async def __aenter__(self) -> SupervisedListener:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Two loops under the gateway's supervisor: (re-)attach, and apply in order."""
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            spawn(f"firestore-listen-{self.name}", self._supervise),
            spawn(f"firestore-apply-{self.name}", self._consume),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        try:
            # not `suppress(CancelledError)` around each await: a caller cancelled while it
            # stops a listener (the pairing loop withdrawing a code) must end, not run on
            await cancel_and_wait(tasks)
        finally:
            self._detach()

    @property
    def active(self) -> bool:
        return self._listener is not None and self._listener.active

    @property
    def suspended(self) -> bool:
        return self._suspended

    def suspend(self) -> None:
        """Firestore is unreachable: close the watch, attach none until `resume`."""
        if not self._suspended:
            self._suspended = True
            self._resumed.clear()
            self._detach()

    def resume(self) -> None:
        """Firestore answers again: attach a fresh watch now (it delivers the whole state)."""
        if self._suspended:
            self._suspended = False
            self._resumed.set()

    def _callback(self, generation: int) -> Callable[[Snapshot], None]:
        def on_changes(snapshot: Snapshot) -> None:
            """Called on the library's thread (or inline by the memory fake)."""
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._enqueue, generation, snapshot)

        return on_changes

    def _enqueue(self, generation: int, snapshot: Snapshot) -> None:
        if generation != self.attaches or self._listener is None:
            return  # from a listener detached since: its successor sends the whole state
        if self._queue.qsize() >= self._max_queued:
            self.overflows += 1
            while not self._queue.empty():
                self._queue.get_nowait()
            log.warning(
                "firestore: listener %s fell %d snapshots behind; re-reading the whole state",
                self.name,
                self._max_queued,
            )
            self._detach()  # the supervisor re-attaches: its first snapshot is complete
            return
        self._queue.put_nowait(snapshot)

    def _attach(self) -> None:
        on_changes = self._callback(self.attaches + 1)
        if self._collection:
            self._listener = self._port.listen_collection(self.path, on_changes)
        else:
            self._listener = self._port.listen_document(self.path, on_changes)
        self.attaches += 1

    def _detach(self) -> None:
        if self._listener is not None:
            old, self._listener = self._listener, None
            close_off_loop(old, self.name)

    async def _supervise(self) -> None:
        backoff = Backoff(1.0, MAX_BACKOFF_S)
        while True:
            if self._suspended:
                await self._resumed.wait()
                continue
            if not self.active:
                if self._listener is not None:
                    log.warning("firestore: listener %s lost its stream; re-attaching", self.name)
                    self._detach()
                try:
                    self._attach()
                    backoff.reset()
                except FirestoreError as exc:
                    log.warning("firestore: cannot listen to %s (%s); retrying", self.name, exc)
                    await backoff.sleep()
                    continue
            await asyncio.sleep(self._check_every)

    async def _consume(self) -> None:
        while True:
            snapshot = await self._queue.get()
            try:
                await self._handler(snapshot)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("firestore: handling a change of %s failed", self.name)
            self.delivered += len(snapshot.changes)


def close_off_loop(listener: Listener, name: str) -> threading.Thread:
    """Close `listener` on a daemon thread of its own (see the module doc): neither the
    loop nor the default executor waits on it, and a close that never returns only keeps
    its own thread (a daemon: it does not hold up the process's exit either)."""

    def close() -> None:
        try:
            listener.close()
        except Exception as exc:
            log.warning("firestore: closing listener %s failed: %s", name, exc)

    thread = threading.Thread(target=close, name=f"firestore-close-{name}", daemon=True)
    thread.start()
    return thread
