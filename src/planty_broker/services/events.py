"""The event log, device-to-server half of the message queue: read by cursor, kept until
confirmed, and a drop is counted, never silent.

Readings, presence transitions and command transitions are appended by the store in
the same transaction as the row they describe. Device errors (bus `DeviceError`) are
coalesced per device and kind (`device_errors`) and appended here in batches. Readers
(`GET /events`, the SSE stream) wait on `wait_new`, woken after commits; a slow poll
covers appends nobody announced.

Retention waits for consumers: with named consumers, only what all of them confirmed
goes, unless a consumer falls further behind than `unconfirmed_max_age_s` /
`unconfirmed_max_rows` (the disk bound); without consumers, `retention_max_age_s` /
`retention_max_rows`. Security events (`credential`) are kept `security_keep_days`
whatever goes around them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from planty_broker.config import EventSettings
from planty_broker.domain.events import (
    SECURITY_EVENT_TYPES,
    Consumer,
    Event,
    KeepRule,
    LogBounds,
    NewEvent,
    PruneResult,
)
from planty_broker.errors import PlantyError
from planty_broker.ports.store import EventStore
from planty_broker.services.bus import Bus, DeviceError, PresenceChanged, ReadingStored
from planty_broker.services.commands.outbox import CommandChanged
from planty_broker.services.device_errors import ErrorCoalescer
from planty_broker.services.registry import now_ms
from planty_broker.services.writer import BatchWriter
from planty_broker.tasks import cancel_and_wait, spawn, wait_event

log = logging.getLogger(__name__)

PRUNE_CHUNK = 10_000  # ids per delete transaction: other writers never wait long
POLL_S = 1.0  # readers re-check at least this often
DAY_MS = 86_400_000
MAX_PENDING_ERRORS = 10_000  # device-error events waiting for the store; then windows count


class CursorError(PlantyError, ValueError):
    """A consumer cursor that cannot be set; the message says why."""


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events after a cursor, and whether some were already gone (deleted by retention)."""

    events: list[Event]
    bounds: LogBounds
    after: int

    @property
    def next_after(self) -> int:
        return self.events[-1].id if self.events else max(self.after, self.missed_through)

    @property
    def missed_through(self) -> int:
        """Ids after `after` up to this one were deleted before this reader got them."""
        return self.bounds.pruned_through if self.bounds.pruned_through > self.after else 0


def _noop() -> None:
    return None


def _through(settings: EventSettings, bounds: LogBounds, cursors: list[int], id_old: int) -> int:
    """How far the prefix retention may delete: what every consumer confirmed, unless one is
    further behind than the unconfirmed limits; without consumers, the plain limits.
    `id_old`: the newest event older than the age limit that applies."""
    if cursors:
        most = max(min(cursors), id_old, bounds.last_id - settings.unconfirmed_max_rows)
    else:
        most = max(id_old, bounds.last_id - settings.retention_max_rows)
    return min(most, bounds.last_id)


class EventService:
    """Appends device errors, wakes readers, confirms consumers, applies retention."""

    def __init__(
        self,
        store: EventStore,
        bus: Bus,
        settings: EventSettings,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self.settings = settings
        self._clock = clock
        self._new = asyncio.Event()
        self.generation = 0
        self.writer: BatchWriter[NewEvent] = BatchWriter(
            store.append_events,
            max_batch=500,
            max_wait_ms=5.0,
            name="events",
            after_commit=lambda _items: self.notify(),
        )
        self.errors = ErrorCoalescer(
            self._append_error,
            every_ms=int(settings.error_every_s * 1000),
            max_keys=settings.error_keys_max,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.last_prune: PruneResult | None = None
        self.pruned_total = 0
        bus.subscribe(DeviceError, self.errors.add)
        bus.subscribe(ReadingStored, lambda _e: self.notify())
        bus.subscribe(CommandChanged, lambda _e: self.notify())
        bus.subscribe(PresenceChanged, lambda _e: self.notify())

    async def start(self) -> None:
        await self.writer.start()
        self._tasks = [
            spawn("events-retention", self._prune_loop),
            spawn("events-device-errors", self._errors_loop),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self.errors.tick(self._clock() + int(self.settings.error_every_s * 1000))  # the counts
        await self.writer.stop()

    # ------------------------------------------------------------ appending

    def _append_error(self, event: NewEvent) -> bool:
        if self.writer.pending() >= MAX_PENDING_ERRORS:
            return False  # the store is behind: the coalescer keeps counting instead
        self.writer.submit(event, _noop)
        return True

    async def _errors_loop(self) -> None:
        step_s = min(1.0, self.settings.error_every_s / 4)
        while True:
            await asyncio.sleep(step_s)
            self.errors.tick(self._clock())

    def notify(self) -> None:
        """Something was appended: wake every waiting reader."""
        self.generation += 1
        self._new.set()
        self._new = asyncio.Event()

    async def wait_new(self, seen: int, timeout_s: float = POLL_S) -> None:
        """Return once an append happened after generation `seen` (read `generation` before
        reading the log), or after `timeout_s`."""
        if self.generation != seen:
            return
        await wait_event(self._new, timeout_s)

    # ------------------------------------------------------------ reading

    async def read(self, after: int, limit: int, types: Sequence[str] | None = None) -> EventPage:
        """Events with id > after (oldest first); `missed_through` tells of retention gaps."""
        bounds = await self._store.event_bounds()
        # from `after`, not from the cut: security events older than the cut are still there
        events = await self._store.read_events(after, limit, types)
        return EventPage(events, bounds, after)

    async def bounds(self) -> LogBounds:
        return await self._store.event_bounds()

    # ------------------------------------------------------------ consumers

    async def confirm(self, name: str, acked: int) -> Consumer:
        """Move a consumer's cursor forward to `acked` (creating the consumer)."""
        if acked < 0:
            raise CursorError("acked must be >= 0")
        bounds = await self._store.event_bounds()
        if acked > bounds.last_id:
            raise CursorError(
                f"acked {acked} is beyond the newest event ({bounds.last_id}); "
                "confirm only ids you have received"
            )
        current = await self._store.get_consumer(name)
        if current is not None and acked < current.cursor:
            raise CursorError(
                f"consumer {name!r} already confirmed up to {current.cursor}; a cursor only "
                "moves forward (delete the consumer to start over)"
            )
        return await self._store.set_consumer_cursor(name, acked, self._clock())

    async def consumer(self, name: str) -> Consumer | None:
        return await self._store.get_consumer(name)

    async def consumers(self) -> list[Consumer]:
        return await self._store.list_consumers()

    async def remove_consumer(self, name: str) -> bool:
        return await self._store.delete_consumer(name)

    # ------------------------------------------------------------ retention

    async def prune_once(self) -> PruneResult | None:
        """One retention pass (see the module docstring); returns what it deleted."""
        s = self.settings
        bounds = await self._store.event_bounds()
        if bounds.first_id is None:
            return None
        now = self._clock()
        cursors = [c.cursor for c in await self._store.list_consumers()]
        age_s = s.unconfirmed_max_age_s if cursors else s.retention_max_age_s
        id_old = await self._store.event_id_before(now - int(age_s * 1000))
        through = _through(s, bounds, cursors, id_old)
        keep = KeepRule(SECURITY_EVENT_TYPES, now - int(s.security_keep_days * DAY_MS))
        lo = max(bounds.first_id, bounds.pruned_through + 1)
        total = PruneResult(0, bounds.pruned_through, {}, 0)
        if through < lo and bounds.pruned_through:  # kept security events may have expired
            total = await self._store.prune_events(bounds.pruned_through, keep)
        while lo <= through:
            step = min(through, lo + PRUNE_CHUNK - 1)
            r = await self._store.prune_events(step, keep)
            dropped = dict(total.dropped_by_consumer)
            for name, n in r.dropped_by_consumer.items():
                dropped[name] = dropped.get(name, 0) + n
            total = PruneResult(
                total.deleted + r.deleted, step, dropped, total.unconfirmed + r.unconfirmed
            )
            lo = step + 1
        self.last_prune = total
        self.pruned_total += total.deleted
        if total.unconfirmed:
            log.warning(
                "event log retention deleted %d event(s) not yet confirmed by every consumer "
                "(%s): a consumer is more than events.unconfirmed_max_age_s / "
                "unconfirmed_max_rows behind; let it catch up or delete it",
                total.unconfirmed,
                ", ".join(f"{k}: {v}" for k, v in sorted(total.dropped_by_consumer.items())),
            )
        return total

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.prune_every_s)
            try:
                await self.prune_once()
            except Exception as exc:
                log.warning("event log retention could not run yet: %s", exc)
