"""Device errors into the event log, coalesced: at most one event per (device, kind) per
interval, with a count, so a device sending junk at 1k msg/s adds a few events a
minute, not 1,000 a second, and never pushes unread readings out of the log.

The first error of a quiet (device, kind) goes out at once (the dashboard shows it
live); the ones after it within `every_ms` are counted and go out as one event when
the interval ends (`count`, `first_ms`, `last_ms`, the last `message`). A window with
nothing more to say is forgotten. At most `max_keys` (device, kind) windows are
held: beyond that, errors of new devices are counted per kind in one overflow event
(`device_id` null, `overflow: true`). While the log's writer is backed up (store
down), windows keep counting instead of queueing more events: memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from planty_broker.domain.events import EventType, NewEvent
from planty_broker.services.bus import DeviceError

_OVERFLOW = "\x00overflow"  # cannot be a device id


@dataclass(slots=True)
class _Window:
    opened_ms: int
    count: int = 0  # errors since the window opened, not yet in an event
    first_ms: int = 0
    last_ms: int = 0
    message: str = ""


class ErrorCoalescer:
    """Turns `DeviceError`s into few `device_error` events; `emit` returns False when the
    log cannot take more now (the window keeps counting)."""

    def __init__(self, emit: Callable[[NewEvent], bool], *, every_ms: int, max_keys: int) -> None:
        self._emit = emit
        self._every_ms = every_ms
        self._max_keys = max_keys
        self._windows: dict[tuple[str | None, str], _Window] = {}
        self.errors = 0  # every error seen
        self.events = 0  # events emitted for them
        self.overflowed = 0  # errors counted in an overflow event (too many devices at once)

    def __len__(self) -> int:
        return len(self._windows)

    def add(self, e: DeviceError) -> None:
        self.errors += 1
        key: tuple[str | None, str] = (e.device_id, e.kind)
        w = self._windows.get(key)
        if w is None and len(self._windows) >= self._max_keys:
            self.overflowed += 1
            key = (_OVERFLOW, e.kind)
            w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window(opened_ms=e.at_ms)
            if self._send(key, 1, e.at_ms, e.at_ms, e.message):
                return
        if w.count == 0:
            w.first_ms = e.at_ms
        w.count += 1
        w.last_ms = e.at_ms
        w.message = e.message

    def tick(self, now_ms: int) -> None:
        """Close the windows whose interval is over: one event each with what they counted."""
        for key, w in list(self._windows.items()):
            if now_ms - w.opened_ms < self._every_ms:
                continue
            if w.count == 0:
                del self._windows[key]
            elif self._send(key, w.count, w.first_ms, w.last_ms, w.message):
                w.opened_ms, w.count = now_ms, 0

    def _send(
        self, key: tuple[str | None, str], count: int, first_ms: int, last_ms: int, message: str
    ) -> bool:
        device_id, kind = key
        data: dict[str, Any] = {
            "kind": kind,
            "message": message,
            "count": count,
            "first_ms": first_ms,
            "last_ms": last_ms,
        }
        if device_id == _OVERFLOW:
            device_id = None
            data["overflow"] = True
        sent = self._emit(NewEvent(last_ms, EventType.DEVICE_ERROR.value, device_id, data))
        if sent:
            self.events += 1
        return sent
