"""The event log, device-to-server half of the message queue: read by cursor, kept until
confirmed or until retention (age, size) drops it, and a drop is counted, never silent.

Readings, presence transitions and command transitions are appended by the store in
the same transaction as the row they describe. Device errors (bus `DeviceError`)
are appended here in batches. Readers (`GET /events`, the SSE stream) wait on
`wait_new`, woken after commits; a slow poll covers appends nobody announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from planty_broker.config import EventSettings
from planty_broker.domain.events import Consumer, Event, EventType, LogBounds, NewEvent, PruneResult
from planty_broker.errors import PlantyError
from planty_broker.ports.store import EventStore
from planty_broker.services.bus import Bus, DeviceError, PresenceChanged, ReadingStored
from planty_broker.services.commands.outbox import CommandChanged
from planty_broker.services.registry import now_ms
from planty_broker.services.writer import BatchWriter

log = logging.getLogger(__name__)

PRUNE_CHUNK = 10_000  # ids per delete transaction: other writers never wait long
POLL_S = 1.0  # readers re-check at least this often


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
        self._task: asyncio.Task[None] | None = None
        self.last_prune: PruneResult | None = None
        self.pruned_total = 0
        bus.subscribe(DeviceError, self._on_error)
        bus.subscribe(ReadingStored, lambda _e: self.notify())
        bus.subscribe(CommandChanged, lambda _e: self.notify())
        bus.subscribe(PresenceChanged, lambda _e: self.notify())

    async def start(self) -> None:
        await self.writer.start()
        self._task = asyncio.create_task(self._prune_loop(), name="events-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.writer.stop()

    # ------------------------------------------------------------ appending

    def _on_error(self, e: DeviceError) -> None:
        data = {"kind": e.kind, "message": e.message}
        self.writer.submit(
            NewEvent(e.at_ms, EventType.DEVICE_ERROR.value, e.device_id, data), _noop
        )

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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._new.wait(), timeout_s)

    # ------------------------------------------------------------ reading

    async def read(self, after: int, limit: int, types: Sequence[str] | None = None) -> EventPage:
        """Events with id > after (oldest first); `missed_through` tells of retention gaps."""
        bounds = await self._store.event_bounds()
        start = max(after, bounds.pruned_through)
        events = await self._store.read_events(start, limit, types)
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
        """One retention pass: confirmed-by-all, older than the age limit, beyond the size."""
        s = self.settings
        bounds = await self._store.event_bounds()
        if bounds.first_id is None:
            return None
        consumers = await self._store.list_consumers()
        targets = [
            await self._store.event_id_before(self._clock() - int(s.retention_max_age_s * 1000)),
            bounds.last_id - s.retention_max_rows,
        ]
        if consumers:
            targets.append(min(c.cursor for c in consumers))
        through = min(max(targets), bounds.last_id)
        if through < bounds.first_id:
            return None
        total = PruneResult(0, through, {}, 0)
        lo = bounds.first_id
        while lo <= through:
            step = min(through, lo + PRUNE_CHUNK - 1)
            r = await self._store.prune_events(step)
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
                "(%s); raise events.retention_max_age_s / retention_max_rows or let the "
                "consumers catch up",
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
