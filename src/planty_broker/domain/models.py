"""Domain values: devices, readings, presence. Pure data, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# A sensor or actuator name a device may declare (`pump`, `soil_moisture`), at most this many.
DECLARED_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_DECLARED = 16
# Named sets of (sensors, actuators) to register a device with before it first connects.
DEVICE_PROFILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pot": (("temperature", "soil_moisture", "light"), ("pump", "lamp")),
    "greenhouse": (("temperature", "soil_moisture", "light", "humidity"), ("pump", "lamp", "fan")),
    "sensor": (("temperature", "soil_moisture", "light"), ()),
}


def check_declared(names: list[str] | tuple[str, ...], what: str) -> tuple[str, ...]:
    """Declared sensor or actuator names, validated (ValueError saying which and why)."""
    if len(names) > MAX_DECLARED:
        raise ValueError(f"{what}: at most {MAX_DECLARED} names")
    for name in names:
        if not DECLARED_NAME_RE.fullmatch(name):
            raise ValueError(
                f"{what}: {name!r} is not a valid name (lower-case a-z, 0-9 and '_', starting "
                "with a letter, at most 32 characters)"
            )
    return tuple(dict.fromkeys(names))


class PresenceState(StrEnum):
    """Presence as the broker knows it; `unknown` covers the time the broker itself was down.

    `never_seen`: registered but never heard from. It is never stored as a transition
    (a device with no stored transition is never seen), and such a device is left out
    of availability, its own and the fleet's.
    """

    UNKNOWN = "unknown"
    ONLINE = "online"
    LATE = "late"
    OFFLINE = "offline"
    NEVER_SEEN = "never_seen"


class PresenceCause(StrEnum):
    """Why presence last changed."""

    STATUS_ONLINE = "status_online"  # retained status online=true
    LAST_WILL = "last_will"  # status online=false: the last will (the connection died)
    SILENCE = "silence"  # nothing heard for the silence bound
    MESSAGE = "message"  # any message from a device thought offline/late
    GATEWAY_RESTART = "gateway_restart"  # state rebuilt after the broker itself was down
    REMOVED = "removed"
    REVOKED = "revoked"
    SHUTDOWN = "shutdown"  # the device said goodbye: status online=false, reason "shutdown"
    REGISTERED = "registered"  # never seen since it was registered


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A registered device as stored: identity, the hash of its token, what it declared."""

    id: str
    created_at_ms: int
    token_hash: str
    name: str | None = None
    sensors: tuple[str, ...] = ()
    actuators: tuple[str, ...] = ()
    fw: str | None = None
    interval_s: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reading:
    """One telemetry message: named values from a device at one moment."""

    device_id: str
    seq: int
    ts_ms: int  # the device's clock when it sent `ts`, else arrival time
    received_ms: int
    values: dict[str, float]
    # The device's boot counter: with `seq`, the reading's identity (stored once). None:
    # unknown (or no seq, as a `read` command's answer): such a reading is never a duplicate.
    boot: int | None = None


@dataclass(frozen=True, slots=True)
class PresenceTransition:
    """A stored change of presence with its time and cause."""

    device_id: str
    state: PresenceState
    at_ms: int
    cause: PresenceCause


def silence_bound_s(
    interval_s: float | None, keepalive_s: float, default_interval_s: float
) -> float:
    """PROTOCOL.md: offline after no message for max(3 x interval_s, 1.5 x keepalive)."""
    interval = interval_s if interval_s and interval_s > 0 else default_interval_s
    return max(3.0 * interval, 1.5 * keepalive_s)
