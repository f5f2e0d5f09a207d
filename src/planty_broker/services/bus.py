"""A small typed event bus: services talk through it, not through each other's internals.

Handlers are plain callables run synchronously in publish order; one failing
handler is logged and isolated, it never breaks the publisher or the others
(the zigbee2mqtt eventBus idea). Handlers that need I/O schedule it themselves.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from planty_broker.domain.models import PresenceTransition, Reading

log = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class ReadingStored:
    """A telemetry reading was stored durably."""

    reading: Reading


@dataclass(frozen=True, slots=True)
class ReadingObserved:
    """Scale-out: the lease holder saw a copy of a reading that some instance stores."""

    reading: Reading


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    transition: PresenceTransition
    previous: str


@dataclass(frozen=True, slots=True)
class DeviceError:
    """A device sent something unusable (kind from protocol.ErrorKind)."""

    device_id: str | None
    kind: str
    message: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class AckReceived:
    device_id: str
    command_id: str
    ok: bool
    result: dict[str, Any] | None
    error: str | None
    at_ms: int


@dataclass(frozen=True, slots=True)
class DeviceStatusReceived:
    """A device published its status (declared sensors, actuators, vitals)."""

    device_id: str
    online: bool
    at_ms: int
    status: Any  # protocol.Status


@dataclass(frozen=True, slots=True)
class DevicesChanged:
    """A device was added, removed, or its credentials changed (reload MQTT auth)."""

    device_id: str
    change: str  # "added" | "removed" | "credentials"


class Bus:
    """Publish/subscribe by event type."""

    def __init__(self) -> None:
        self._handlers: defaultdict[type[Any], list[Callable[[Any], None]]] = defaultdict(list)

    def subscribe(self, event_type: type[E], handler: Callable[[E], None]) -> Callable[[], None]:
        """Register a handler; returns a function that unregisters it."""
        self._handlers[event_type].append(handler)

        def unsubscribe() -> None:
            if handler in self._handlers[event_type]:
                self._handlers[event_type].remove(handler)

        return unsubscribe

    def publish(self, event: object) -> None:
        for handler in tuple(self._handlers.get(type(event), ())):
            try:
                handler(event)
            except Exception:
                log.exception("event handler %r failed on %s", handler, type(event).__name__)
