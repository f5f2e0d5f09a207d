"""`ReloadCoalescer`: however many changes arrive, at most one reload per interval.

    reload = ReloadCoalescer(apply_files_and_sighup, min_interval_s=1.0)
    reload.request()      # a change happened: it goes out with the next reload
    await reload()        # the same, and return once a reload that began after it is done

Every credential change (registration, revocation, claim, rotation) asks for a
reload of Mosquitto's password, ACL and CRL files. A reload costs Mosquitto its
single thread (it re-reads the files and re-checks every connected client), so
the requests are coalesced:

- the first request after a quiet interval runs at once (an interactive
  registration costs one reload, not one interval);
- a run starts at most once per `min_interval_s` (from the previous run's start)
  and never while another runs; every request made before a run *starts* is
  covered by it, because the job reads the complete desired state when it starts;
- `await reload()` returns when a run that started after the call is done, and
  raises what that run raised (a caller that must know a revocation is live
  waits; a bulk registration only calls `request()` and waits once at the end);
- a failed run is logged; the next request runs again.

The job must read the state it applies before its first `await` (or at least
after the coalescer started it): what was asked before the start is covered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable

log = logging.getLogger("planty_broker.mqttserver")


class ReloadCoalescer:
    """See the module docstring. Single event loop; not thread-safe."""

    def __init__(
        self,
        job: Callable[[], Awaitable[None]],
        *,
        min_interval_s: float = 1.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if min_interval_s < 0:
            raise ValueError("min_interval_s must be >= 0")
        self._job = job
        self._interval = min_interval_s
        self._clock = clock
        self._sleep = sleep
        self._asked = 0  # requests made so far (each one a number)
        self._covered = 0  # every request up to this number went out with a finished run
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._last_start = -math.inf
        self.runs = 0  # how many times the job ran
        self.requests = 0  # how many changes asked for one

    @property
    def min_interval_s(self) -> float:
        return self._interval

    @property
    def pending(self) -> bool:
        """True while a request waits for (or rides on) a run not finished yet."""
        return self._covered < self._asked

    def request(self) -> int:
        """Ask for a reload without waiting; returns the request's number."""
        self._asked += 1
        self.requests += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="mosquitto-reload"
            )
        return self._asked

    async def __call__(self) -> None:
        """Ask for a reload and return once one that started after this call is done."""
        number = self.request()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((number, future))
        await future

    async def close(self) -> None:
        """Stop: a run under way is cancelled; waiters get CancelledError."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, future in self._waiters:
            if not future.done():
                future.cancel()
        self._waiters.clear()

    # ------------------------------------------------------------ internals

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def _run(self) -> None:
        while self._covered < self._asked:
            delay = self._last_start + self._interval - self._now()
            if delay > 0:
                await self._sleep(delay)
            covers = self._asked  # the job reads the state of every request up to here
            self._last_start = self._now()
            self.runs += 1
            error: BaseException | None = None
            try:
                await self._job()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # told to the waiters; the next request runs again
                error = exc
            self._covered = covers
            self._settle(covers, error)

    def _settle(self, covers: int, error: BaseException | None) -> None:
        keep: list[tuple[int, asyncio.Future[None]]] = []
        told = False
        for number, future in self._waiters:
            if number > covers:
                keep.append((number, future))
            elif not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
                    told = True
        self._waiters = keep
        if error is not None and not told:
            log.error("applying credential changes to Mosquitto failed: %s", error)
