"""One task and one heap for every command deadline and ack timeout (not a timer each).

Entries are not removed when a command ends: when one fires, the callback checks
whether it still applies (the command may have ended, or been re-sent since). That
keeps adding O(log n) and ending O(1); `compact` drops the entries of ended commands
once they outnumber the live ones (an hour-long deadline per command would otherwise
pile up at a high command rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable
from enum import StrEnum

from planty_broker.tasks import spawn, wait_event

log = logging.getLogger(__name__)


class TimerKind(StrEnum):
    DEADLINE = "deadline"  # the command's `exp`
    ACK = "ack"  # ack timeout of one attempt
    LEASE = "lease"  # another instance's send lease of the command ends (issue 15)


Fire = Callable[[TimerKind, str, int, int], None]  # kind, command id, attempt, due_ms


class Timers:
    """Calls `fire(kind, command_id, attempt, due_ms)` at (or just after) each due time."""

    def __init__(self, fire: Fire, clock: Callable[[], int]) -> None:
        self._fire = fire
        self._clock = clock
        self._heap: list[tuple[int, int, TimerKind, str, int]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._heap)

    async def start(self) -> None:
        self._task = spawn("commands-timers", self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def add(self, due_ms: int, kind: TimerKind, command_id: str, attempt: int = 0) -> None:
        entry = (due_ms, next(self._seq), kind, command_id, attempt)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._changed.set()  # a new earliest: wake the loop to sleep less

    def compact(self, alive: Callable[[str], bool]) -> int:
        """Keep only the entries of commands for which `alive(id)`; returns how many went."""
        before = len(self._heap)
        self._heap = [e for e in self._heap if alive(e[3])]
        heapq.heapify(self._heap)
        self._changed.set()
        return before - len(self._heap)

    def fire_due(self, now_ms: int) -> int:
        """Fire every entry due at `now_ms`; returns how many fired (also for tests)."""
        n = 0
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            due, _, kind, cid, attempt = heapq.heappop(heap)
            n += 1
            try:
                self._fire(kind, cid, attempt, due)
            except Exception:
                log.exception("commands: timer %s of %s failed", kind.value, cid)
        return n

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            self.fire_due(self._clock())
            if self._heap:
                wait_s = max(0.0, (self._heap[0][0] - self._clock()) / 1000)
                await wait_event(self._changed, wait_s + 0.001)
            else:
                await self._changed.wait()
