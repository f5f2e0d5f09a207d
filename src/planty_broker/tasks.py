"""Background tasks: one supervisor runs every long-running loop (restarts with backoff, says
which loops are down), one way to stop tasks for every service (cancel, then wait), and one
way for a loop to wait for an event with a timeout (`wait_event`, never `asyncio.wait_for`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from planty_broker.backoff import Backoff

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until each has ended; a task that had failed is logged."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        try:
            await t
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves: do not swallow that
        except Exception:
            log.exception("background task %s had failed", t.get_name())


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set (True) or `timeout_s` has passed (False).

    Not `asyncio.wait_for(event.wait(), timeout_s)`: on Python 3.11 a task cancelled in the
    same loop pass as the event is set gets the event's result back from `wait_for` and the
    cancellation is lost (CPython issue 86296, fixed in 3.12). A loop built on it runs on
    after its stop, and whoever awaits its end waits for ever (the Firestore gateway stops
    that hung under load). `asyncio.timeout` never loses a cancellation.
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


# ---------------------------------------------------------------- the supervisor


@dataclass(slots=True)
class LoopState:
    """One supervised loop, as health checks and /metrics see it."""

    name: str
    running: bool = False
    crashes: int = 0  # times it died (an exception, or cancelled from outside)
    restarts: int = 0
    down_since: float | None = None  # clock time it died; None while running
    last_error: str = ""


class Supervisor:
    """Runs every long-running background loop: logs a crash, restarts the loop with backoff
    (`backoff.Backoff`), and says which loops are down meanwhile (readiness).

    `spawn(name, loop)` returns the supervising task: cancel it (or `cancel_and_wait`) to
    stop the loop for good, exactly as with a plain task. A loop that returns normally has
    finished (e.g. it saw its service stopping) and is not restarted; one that raises, or
    whose task is cancelled from outside (`kill`), is restarted after the next backoff
    delay; the delays start small again once a run lasted `stable_after_s`.
    """

    def __init__(
        self,
        *,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        stable_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._stable_after_s = stable_after_s
        self._clock = clock
        self.loops: dict[str, LoopState] = {}
        self._inner: dict[str, asyncio.Task[Any]] = {}

    def spawn(self, name: str, loop: Callable[[], Awaitable[Any]]) -> asyncio.Task[None]:
        """Start `loop()` under supervision; names are made unique (`name#2`, ...)."""
        unique, n = name, 1
        while unique in self.loops:
            n += 1
            unique = f"{name}#{n}"
        self.loops[unique] = LoopState(unique)
        return asyncio.create_task(self._supervise(unique, loop), name=f"supervise-{unique}")

    def down(self) -> list[LoopState]:
        """Loops that died and wait for their restart."""
        return [s for s in self.loops.values() if s.down_since is not None]

    def kill(self, name: str) -> bool:
        """Cancel the loop's current run as a crash would end it (tests, diagnostics)."""
        inner = self._inner.get(name)
        if inner is None or inner.done():
            return False
        inner.cancel()
        return True

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[Any]]) -> None:
        state = self.loops[name]
        backoff = Backoff(self._initial_s, self._max_s, jitter=0.2)
        try:
            while True:
                started = self._clock()
                inner = asyncio.ensure_future(loop())
                self._inner[name] = inner
                state.running, state.down_since = True, None
                try:
                    await asyncio.wait({inner})
                except asyncio.CancelledError:  # stopping for good: end the loop, then us
                    await _end(name, inner)
                    raise
                state.running = False
                if inner.cancelled():
                    why = "cancelled from outside"
                elif (exc := inner.exception()) is not None:
                    why = f"{type(exc).__name__}: {exc}"
                else:
                    log.debug("background loop %s finished", name)
                    return
                state.crashes += 1
                state.down_since = self._clock()
                state.last_error = why
                if state.down_since - started >= self._stable_after_s:
                    backoff.reset()
                delay = backoff.next()
                log.error(
                    "background loop %s died (%s); restarting it in %.1f s (not ready meanwhile)",
                    name,
                    why,
                    delay,
                    exc_info=None if inner.cancelled() else inner.exception(),
                )
                await asyncio.sleep(delay)
                state.restarts += 1
        finally:
            self._inner.pop(name, None)
            self.loops.pop(name, None)


RECANCEL_S = 5.0  # a loop still running this long after its cancel is cancelled again (its
# clean-up after a cancel is short and synchronous in every loop here: 5 s leaves it room)


async def _end(name: str, inner: asyncio.Future[Any]) -> None:
    """Cancel a loop and wait for its end. A loop that swallowed its cancellation (a
    dependency's `wait_for` on Python 3.11, see `wait_event`) is cancelled again, said in
    a warning, until it ends: a stop never waits for ever on one lost cancellation."""
    inner.cancel()
    while True:
        with contextlib.suppress(asyncio.CancelledError):  # ours: re-raised by the caller
            await asyncio.wait({inner}, timeout=RECANCEL_S)
        if inner.done():
            break
        log.warning("background loop %s ran on after its cancellation; cancelling it again", name)
        inner.cancel()
    if not inner.cancelled():
        inner.exception()  # retrieved: a loop that failed as it stopped is no crash to report


_default = Supervisor()
_current: contextvars.ContextVar[Supervisor] = contextvars.ContextVar(
    "planty_supervisor", default=_default
)


def current_supervisor() -> Supervisor:
    """The supervisor of the running gateway (a process-wide one when none is set)."""
    return _current.get()


def use_supervisor(supervisor: Supervisor) -> contextvars.Token[Supervisor]:
    """Make `supervisor` the one `spawn` uses in this context (the gateway sets its own)."""
    return _current.set(supervisor)


def spawn(name: str, loop: Callable[[], Awaitable[Any]]) -> asyncio.Task[None]:
    """Start a long-running background loop under the current supervisor (see `Supervisor`)."""
    return current_supervisor().spawn(name, loop)
