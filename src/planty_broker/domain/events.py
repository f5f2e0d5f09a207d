"""The event log's values: one ordered log of everything that happened, read by cursor."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    """What an event is about; `data` holds the details of each type (docs/events.md)."""

    READING = "reading"  # a telemetry reading stored (same transaction as the reading)
    PRESENCE = "presence"  # a presence transition stored (same transaction)
    COMMAND = "command"  # a command transition stored (same transaction)
    DEVICE_ERROR = "device_error"  # a device sent something unusable
    CREDENTIAL = "credential"  # issued, first use, rotated, revoked, refused login (security.md)
    RULE = "rule"  # a rule fired, was suppressed, warned, or changed (docs/rules.md)
    FIRMWARE = "firmware"  # a release added, a rollout's admin action, a device's update step
    AUDIT = "audit"  # an admin action: who (token name), from where (address), what (events.md)


EVENT_TYPES = tuple(t.value for t in EventType)
# Kept `events.security_keep_days` whatever the prefix retention deletes around them.
SECURITY_EVENT_TYPES = (EventType.CREDENTIAL.value, EventType.AUDIT.value)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; the store gives it its id."""

    at_ms: int
    type: str
    device_id: str | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event: `id` rises by one per event, in commit order."""

    id: int
    at_ms: int
    type: str
    device_id: str | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Consumer:
    """A named reader of the log: `cursor` = the last id it confirmed; `dropped` = events
    retention deleted before it confirmed them (never silent)."""

    name: str
    cursor: int
    created_ms: int
    updated_ms: int
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class LogBounds:
    """Where the log stands: the ids kept, the newest id, how far retention has deleted."""

    first_id: int | None  # the oldest event kept (None: the log is empty)
    last_id: int  # the newest id ever given (0: nothing appended yet)
    pruned_through: int  # every event with id <= this is gone (0: none deleted yet)
    deleted_unconfirmed: int = 0  # events deleted before every consumer had confirmed them

    @property
    def kept(self) -> int:
        """Events kept, an upper bound (an id can go unused, e.g. by a refused batch)."""
        return 0 if self.first_id is None else self.last_id - self.first_id + 1


@dataclass(frozen=True, slots=True)
class PruneResult:
    """One retention pass: events deleted through an id; unconfirmed ones, per consumer."""

    deleted: int
    through_id: int
    dropped_by_consumer: dict[str, int]
    unconfirmed: int = 0  # deleted events that at least one consumer had not confirmed


@dataclass(frozen=True, slots=True)
class KeepRule:
    """Events of these `types` at or after `after_ms` survive a prune (security events have
    a retention of their own)."""

    types: tuple[str, ...]
    after_ms: int
