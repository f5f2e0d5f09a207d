"""Credential events: every step of a credential's life, on the bus, in the event log, per device.

`EventRecorder.record()` publishes a `CredentialEvent` on the bus, appends it to
the event log (type `credential`, when the store has one) and keeps the newest
ones per device in memory for `GET /api/v1/devices/{id}/credentials`. Event data
never holds a secret: ids, kinds, reasons, addresses.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from planty_broker.domain.events import NewEvent
from planty_broker.domain.identity import CredentialEventKind
from planty_broker.errors import StoreError
from planty_broker.services.bus import Bus

log = logging.getLogger(__name__)

EVENT_TYPE = "credential"
PER_DEVICE = 50
UNATTRIBUTED = 200


@dataclass(frozen=True, slots=True)
class CredentialEvent:
    """One credential event (on the bus and, as type `credential`, in the event log)."""

    kind: CredentialEventKind
    device_id: str | None
    at_ms: int
    credential_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_data(self) -> dict[str, Any]:
        """The event log's `data` of this event."""
        out: dict[str, Any] = {"event": self.kind.value}
        if self.credential_id is not None:
            out["credential_id"] = self.credential_id
        out.update(self.data)
        return out


# (at_ms, type, device_id, data) rows -> durable on return
LogAppender = Callable[[Sequence[tuple[int, str, str | None, dict[str, Any]]]], Awaitable[None]]


def store_appender(store: object) -> LogAppender | None:
    """An appender over the store's event log (issue 3), None if the store has none."""
    append = getattr(store, "append_events", None)
    if append is None:
        return None

    async def appender(rows: Sequence[tuple[int, str, str | None, dict[str, Any]]]) -> None:
        await append([NewEvent(at, kind, device, data) for at, kind, device, data in rows])

    return appender


class EventRecorder:
    """Publishes, logs and remembers credential events."""

    def __init__(self, bus: Bus, appender: LogAppender | None = None) -> None:
        self._bus = bus
        self.appender = appender
        self._by_device: dict[str, deque[CredentialEvent]] = {}
        self._unattributed: deque[CredentialEvent] = deque(maxlen=UNATTRIBUTED)
        self.counts: dict[str, int] = {}

    def _remember(self, event: CredentialEvent) -> None:
        """Count, keep (bounded per device) and publish one event."""
        key = event.kind.value
        self.counts[key] = self.counts.get(key, 0) + 1
        if event.device_id is None:
            self._unattributed.append(event)
        else:
            q = self._by_device.get(event.device_id)
            if q is None:
                q = self._by_device[event.device_id] = deque(maxlen=PER_DEVICE)
            q.append(event)
        self._bus.publish(event)

    async def record(self, event: CredentialEvent) -> None:
        key = event.kind.value
        self._remember(event)
        if self.appender is not None:
            try:
                await self.appender([(event.at_ms, EVENT_TYPE, event.device_id, event.as_data())])
            except StoreError as exc:
                log.warning("credential event %s not written to the event log: %s", key, exc)

    async def record_many(self, events: Sequence[CredentialEvent]) -> None:
        """`record` for many events, written to the event log in one append."""
        for event in events:
            self._remember(event)
        if self.appender is not None and events:
            rows = [(e.at_ms, EVENT_TYPE, e.device_id, e.as_data()) for e in events]
            try:
                await self.appender(rows)
            except StoreError as exc:
                log.warning("%d credential events not written to the event log: %s", len(rows), exc)

    def for_device(self, device_id: str) -> list[CredentialEvent]:
        """The newest events of one device (since this gateway started), oldest first."""
        return list(self._by_device.get(device_id, ()))

    def unattributed(self) -> list[CredentialEvent]:
        """Events no device could be named for (refused logins of unknown origin)."""
        return list(self._unattributed)

    def forget(self, device_id: str) -> None:
        self._by_device.pop(device_id, None)
