"""The event-log cursor sink: store-and-forward from the broker's event log into Firestore.

The connector is a named consumer of the event log (`firestore`). It reads the
events after its cursor in order, folds them into pending document writes
(device documents, history buckets, command documents), lets the `DocBuffer`
commit them, and confirms in the log only the events whose documents Firestore
has accepted. While Firestore is unreachable the cursor stands still and the
log keeps the events (its retention counts anything it has to drop), so the
documents catch up in order when it returns; device control and rules never
wait for it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from planty_broker.domain.events import Consumer, Event, LogBounds
from planty_broker.northbound.firestore import model
from planty_broker.northbound.firestore.bridges import EventsApi
from planty_broker.northbound.firestore.buffer import DocBuffer
from planty_broker.northbound.firestore.port import FirestorePort
from planty_broker.northbound.firestore.rollup import Bucket, Rollups
from planty_broker.ports.store import EventStore
from planty_broker.text import plural

log = logging.getLogger(__name__)

CONSUMER = "firestore"
PAGE = 2000  # events folded per read
MAX_PENDING_DOCS = 20_000  # stop reading the log while this many documents wait


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EventSink:
    """Folds the event log into the document buffer and moves the consumer cursor."""

    def __init__(
        self,
        events: EventsApi,
        port: FirestorePort,
        paths: model.Paths,
        buffer: DocBuffer,
        *,
        known_device: Callable[[str], bool],
        history_bucket: str = "hour",
        keep_days: float = 90.0,
        consumer: str = CONSUMER,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._events = events
        self._clock_ms = clock_ms  # injected by tests: bucket eviction is relative to "now"
        self._port = port
        self._paths = paths
        self._buffer = buffer
        self._known = known_device
        self._keep_days = keep_days
        self.consumer = consumer
        self.rollups = Rollups(history_bucket)
        self.folded = 0  # highest event id folded into the buffer
        self.confirmed = 0  # cursor confirmed in the event log
        self.readings_folded = 0
        self.replays_skipped = 0

    async def open(self) -> None:
        """Register as a consumer (first start: from the log's end) and read the cursor."""
        existing = await self._events.consumer(self.consumer)
        if existing is None:
            last = (await self._events.bounds()).last_id
            existing = await self._events.confirm(self.consumer, last)
            log.info(
                "firestore: registered as event-log consumer %r at event %d", self.consumer, last
            )
        elif existing.dropped:
            log.warning(
                "firestore: the event log's retention dropped %s before Firestore "
                "took them; their readings are missing from the history documents",
                plural(existing.dropped, "event"),
            )
        self.folded = self.confirmed = existing.cursor

    @property
    def has_room(self) -> bool:
        return len(self._buffer) < MAX_PENDING_DOCS

    async def pull(self) -> int:
        """Fold the next page of events; returns how many were folded (0: caught up)."""
        if not self.has_room:
            return 0
        page = await self._events.read(self.folded, PAGE)
        if page.missed_through > self.folded:
            log.warning(
                "firestore: events %d..%d were deleted by the log's retention before "
                "Firestore took them",
                self.folded + 1,
                page.missed_through,
            )
            if not page.events:
                self.folded = page.missed_through
        events = list(page.events)
        if not events:
            return 0
        await self._seed_buckets(events)
        for e in events:
            self._fold(e)
            self.folded = e.id
        return len(events)

    async def confirm(self) -> bool:
        """Move the consumer cursor to what Firestore has accepted; True if it moved."""
        through = self._buffer.confirmed_through(self.folded)
        if through <= self.confirmed:
            return False
        await self._events.confirm(self.consumer, through)
        self.confirmed = through
        self.rollups.evict_before(self._clock_ms() - 2 * 86_400_000, self._bucket_busy)
        return True

    def _bucket_busy(self, b: Bucket) -> bool:
        return self._paths.bucket(b.device_id, b.bucket_id) in self._buffer

    # ------------------------------------------------------------ folding

    async def _seed_buckets(self, events: list[Event]) -> None:
        """Read the stored figures of every bucket this page touches for the first time."""
        missing: dict[tuple[str, int], int] = {}
        rollups = self.rollups
        for e in events:
            if e.type == "reading" and e.device_id and self._known(e.device_id):
                ts = _ts(e)
                key = rollups.key(e.device_id, ts)
                if key not in missing and rollups.get(e.device_id, ts) is None:
                    missing[key] = ts
        if not missing:
            return
        keys = list(missing)
        docs = await asyncio.gather(
            *(
                self._port.get(self._paths.bucket(dev, rollups.bucket_id(missing[(dev, n)])))
                for dev, n in keys
            )
        )
        for (dev, n), doc in zip(keys, docs, strict=True):
            rollups.add(dev, missing[(dev, n)], doc)

    def _fold(self, e: Event) -> None:
        device_id = e.device_id
        if e.type == "firmware":
            self._firmware(e, device_id)
            return
        if device_id is None or not self._known(device_id):
            return
        data = e.data
        if e.type == "reading":
            self._reading(e, device_id, data)
        elif e.type == "presence":
            fields = model.presence_fields(
                e.id, str(data.get("state")), str(data.get("cause")), e.at_ms
            )
            self._buffer.set(self._paths.device(device_id), fields, e.id)
        elif e.type == "command":
            if data.get("origin") == CONSUMER and isinstance(data.get("id"), str):
                fields = model.command_fields(e.id, data, e.at_ms, self._keep_days)
                self._buffer.set(self._paths.command(data["id"]), fields, e.id)
        elif e.type == "device_error":
            self._buffer.set(
                self._paths.device(device_id), model.error_fields(e.id, data, e.at_ms), e.id
            )

    def _firmware(self, e: Event, device_id: str | None) -> None:
        """A rollout's document under the broker's, and a device's last update step."""
        rid = e.data.get("rollout")
        if not isinstance(rid, int):
            return  # a release added: nothing to mirror
        path = self._paths.rollout(rid)
        if device_id is None:
            self._buffer.set(path, model.rollout_fields(e.id, e.data, e.at_ms), e.id)
            return
        self._buffer.set(path, model.rollout_device_fields(e.id, device_id, e.data, e.at_ms), e.id)
        if self._known(device_id):
            fields = {"firmware": model.firmware_step(e.data, e.at_ms), "event_id": e.id}
            self._buffer.set(self._paths.device(device_id), fields, e.id)

    def _reading(self, e: Event, device_id: str, data: Mapping[str, Any]) -> None:
        values = data.get("readings")
        if not isinstance(values, Mapping):
            return
        ts = _ts(e)
        seq = int(data.get("seq") or 0)
        self._buffer.set(
            self._paths.device(device_id),
            model.reading_fields(e.id, ts, e.at_ms, seq, values),
            e.id,
        )
        bucket = self.rollups.get(device_id, ts)
        if bucket is None:  # not seeded (cannot happen after _seed_buckets); start empty
            bucket = self.rollups.add(device_id, ts, None)
        numeric = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if bucket.fold(e.id, ts, numeric):
            self.readings_folded += 1
            self._buffer.lazy(
                self._paths.bucket(device_id, bucket.bucket_id),
                functools.partial(bucket.to_doc, self._keep_days),  # once per write
                e.id,
            )
        else:
            self.replays_skipped += 1


def _ts(e: Event) -> int:
    ts = e.data.get("ts_ms")
    return int(ts) if isinstance(ts, (int, float)) else e.at_ms


class StoreEvents:
    """`EventsApi` straight over the store, for a build without the event service."""

    def __init__(self, store: EventStore, poll_s: float = 0.5) -> None:
        self._store = store
        self._poll = poll_s
        self.generation = 0

    async def read(self, after: int, limit: int, types: Sequence[str] | None = None) -> _Page:
        bounds = await self._store.event_bounds()
        start = max(after, bounds.pruned_through)
        events = await self._store.read_events(start, limit, types)
        return _Page(events, bounds.pruned_through if bounds.pruned_through > after else 0)

    async def wait_new(self, seen: int, timeout_s: float = 1.0) -> None:
        await asyncio.sleep(min(timeout_s, self._poll))

    async def confirm(self, name: str, acked: int) -> Consumer:
        return await self._store.set_consumer_cursor(name, acked, _now_ms())

    async def consumer(self, name: str) -> Consumer | None:
        return await self._store.get_consumer(name)

    async def bounds(self) -> LogBounds:
        return await self._store.event_bounds()


@dataclass(frozen=True, slots=True)
class _Page:
    events: list[Event]
    missed_through: int
