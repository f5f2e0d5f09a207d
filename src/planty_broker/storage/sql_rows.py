"""Conversions between domain values and SQL rows (shared by the SQL adapter's queries)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from planty_broker.domain.models import (
    DeviceRecord,
    PresenceCause,
    PresenceState,
    PresenceTransition,
    Reading,
)


def device_values(d: DeviceRecord) -> dict[str, Any]:
    return {
        "id": d.id,
        "created_at_ms": d.created_at_ms,
        "token_hash": d.token_hash,
        "name": d.name,
        "sensors": list(d.sensors),
        "actuators": list(d.actuators),
        "fw": d.fw,
        "interval_s": d.interval_s,
        "attrs": d.attrs,
    }


def device(r: Sequence[Any]) -> DeviceRecord:
    """A row of `select(*devices.c)` (columns in table order)."""
    return DeviceRecord(
        id=r[0],
        created_at_ms=r[1],
        token_hash=r[2],
        name=r[3],
        sensors=tuple(r[4]),
        actuators=tuple(r[5]),
        fw=r[6],
        interval_s=r[7],
        attrs=r[8] if r[8] is not None else {},
    )


def reading_values(r: Reading) -> dict[str, Any]:
    return {
        "device_id": r.device_id,
        "seq": r.seq,
        "ts_ms": r.ts_ms,
        "received_ms": r.received_ms,
        "values": r.values,
    }


def reading(r: Sequence[Any]) -> Reading:
    """A row of (device_id, seq, ts_ms, received_ms, values)."""
    return Reading(device_id=r[0], seq=r[1], ts_ms=r[2], received_ms=r[3], values=r[4])


def presence_values(t: PresenceTransition) -> dict[str, Any]:
    return {
        "device_id": t.device_id,
        "state": t.state.value,
        "at_ms": t.at_ms,
        "cause": t.cause.value,
    }


def transition(r: Sequence[Any]) -> PresenceTransition:
    """A row of (device_id, state, at_ms, cause)."""
    return PresenceTransition(
        device_id=r[0], state=PresenceState(r[1]), at_ms=r[2], cause=PresenceCause(r[3])
    )
