"""Long-term history and the retention that keeps the store's size bounded (issue 12).

Every `store.housekeeping_every_s` one pass, on the injected clock:
1. readings that arrived more than a minute ago are rolled up per device, sensor and
   hour (count, min, max, sum, last), in small transactions;
2. raw readings older than `store.readings_keep_days` are deleted, never before they
   are rolled up (the store refuses to delete past its rollup watermark);
3. once an hour: rollups older than `store.rollups_keep_days` and presence transitions
   older than `presence.keep_days` (each device keeps its newest) are deleted.
The command outbox (`commands.keep_final_s`), rule history (`rules.history_keep_days`)
and the event log (`[events]`) prune themselves. A pass that fails (store down) is
logged and retried at the next one; nothing is lost by waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from planty_broker.config import Settings
from planty_broker.domain.history import DAY_MS, HOUR_MS, HourlyRollup, RetentionPolicy
from planty_broker.errors import PlantyError
from planty_broker.ports.store import HistoryStore
from planty_broker.services.registry import now_ms
from planty_broker.tasks import cancel_and_wait, spawn

log = logging.getLogger(__name__)

ROLLUP_CHUNK = 5_000  # readings per rollup transaction: ingest never waits long behind it
MAX_CHUNKS_PER_PASS = 200  # a backlog (an old database) is worked off over several passes
DELETE_LIMIT = 200_000  # raw readings deleted per pass at most
PRESENCE_LIMIT = 100_000
SLOW_EVERY_MS = HOUR_MS  # rollups and presence are pruned this often


def policy_of(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        readings_ms=int(settings.store.readings_keep_days * DAY_MS),
        rollups_ms=int(settings.store.rollups_keep_days * DAY_MS),
        presence_ms=int(settings.presence.keep_days * DAY_MS),
    )


@dataclass(slots=True)
class HousekeepingTotals:
    """What the passes did since start (for /metrics and the status API)."""

    passes: int = 0
    failures: int = 0
    rolled_up: int = 0
    readings_deleted: int = 0
    rollups_deleted: int = 0
    presence_deleted: int = 0
    last_pass_ms: int = 0
    last_error: str = ""


class HistoryService:
    """Rolls readings up and applies retention; answers the long-term charts."""

    def __init__(
        self,
        store: HistoryStore,
        policy: RetentionPolicy,
        *,
        every_s: float = 60.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self.policy = policy
        self._every_s = every_s
        self._clock = clock
        self._last_slow_ms: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.totals = HousekeepingTotals()

    async def start(self) -> None:
        self._tasks = [spawn("history-housekeeping", self._loop)]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def hourly(
        self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[HourlyRollup]:
        return await self._store.hourly_readings(device_id, since_ms, until_ms, limit)

    async def run_once(self) -> HousekeepingTotals:
        """One pass at the clock's time; returns the running totals."""
        now = self._clock()
        cut = self.policy.cutoffs(now)
        t = self.totals
        for _ in range(MAX_CHUNKS_PER_PASS):
            n = await self._store.roll_up_readings(cut.rollup_before_ms, ROLLUP_CHUNK)
            t.rolled_up += n
            if n < ROLLUP_CHUNK:
                break
            await asyncio.sleep(0)  # let ingest commit between chunks
        t.readings_deleted += await self._store.prune_readings(cut.readings_before_ms, DELETE_LIMIT)
        if self._last_slow_ms is None or now - self._last_slow_ms >= SLOW_EVERY_MS:
            t.rollups_deleted += await self._store.prune_rollups(cut.rollups_before_ms)
            t.presence_deleted += await self._store.prune_presence(
                cut.presence_before_ms, PRESENCE_LIMIT
            )
            self._last_slow_ms = now
        t.passes += 1
        t.last_pass_ms = now
        return t

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
                self.totals.last_error = ""
            except Exception as exc:
                self.totals.failures += 1
                self.totals.last_error = str(exc)
                if isinstance(exc, PlantyError):  # the store is down or refused: say so
                    log.warning("history housekeeping could not run now (%s); retrying", exc)
                else:
                    log.exception("history housekeeping failed; retrying at the next pass")
            await asyncio.sleep(self._every_s)
