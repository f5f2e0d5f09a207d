"""The document model (docs/firestore.md): paths, ids, and the fields the broker writes. Pure.

    brokers/{broker_id}                                  the broker: owner, heartbeat, config
    brokers/{broker_id}/devices/{device_id}              presence, latest readings, stats
    brokers/{broker_id}/devices/{device_id}/history/{bucket}   readings rolled up per hour/day
    brokers/{broker_id}/rules/{rule_id}                  rules the server writes
    brokers/{broker_id}/commands/{command_id}            commands the server writes; state back
    pairing_codes/{code}                                 a live pairing code, claimed by an app

Times are written as timestamps (UTC); every document the broker derives from
the event log carries `event_id`, the newest event folded into it, so a retry
or a replay after a crash never counts anything twice.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from planty_broker.domain.models import DeviceRecord

# Fields of server-written documents that the broker itself writes back (never read as input).
RULE_STATUS = "applied"
THRESHOLDS_STATUS = "thresholds_applied"
INTERVAL_STATUS = "read_interval_applied"
COMMAND_BROKER_FIELDS = frozenset(
    {
        "state",
        "attempts",
        "result",
        "error",
        "queued_at",
        "sent_at",
        "final_at",
        "updated_at",
        "rtt_ms",
        "detail",
        "event_id",
        "expire_at",
        "origin",
    }
)
_DOC_ID = re.compile(r"^[^/]{1,1500}$")


def at(ms: int | float | None) -> dt.datetime | None:
    """Unix milliseconds -> an aware UTC datetime (a Firestore timestamp)."""
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def now() -> dt.datetime:
    """The broker's clock, for times inside maps (a server timestamp is allowed only at the
    top level by some Firestore emulators, so nested times are the broker's)."""
    return dt.datetime.now(dt.UTC)


def valid_doc_id(doc_id: str) -> bool:
    return bool(_DOC_ID.match(doc_id)) and doc_id not in (".", "..") and "__" not in doc_id[:2]


class Paths:
    """Every document path of one broker."""

    __slots__ = ("broker_id",)

    def __init__(self, broker_id: str) -> None:
        if not valid_doc_id(broker_id):
            raise ValueError(f"broker id {broker_id!r} cannot be a Firestore document id")
        self.broker_id = broker_id

    @property
    def broker(self) -> str:
        return f"brokers/{self.broker_id}"

    @property
    def devices(self) -> str:
        return f"{self.broker}/devices"

    def device(self, device_id: str) -> str:
        return f"{self.devices}/{device_id}"

    def history(self, device_id: str) -> str:
        return f"{self.device(device_id)}/history"

    def bucket(self, device_id: str, bucket_id: str) -> str:
        return f"{self.history(device_id)}/{bucket_id}"

    @property
    def rules(self) -> str:
        return f"{self.broker}/rules"

    def rule(self, rule_id: str) -> str:
        return f"{self.rules}/{rule_id}"

    @property
    def commands(self) -> str:
        return f"{self.broker}/commands"

    def command(self, command_id: str) -> str:
        return f"{self.commands}/{command_id}"

    @property
    def rollouts(self) -> str:
        return f"{self.broker}/rollouts"

    def rollout(self, rollout_id: int) -> str:
        return f"{self.rollouts}/{rollout_id}"


PAIRING_CODES = "pairing_codes"


def pairing_path(code: str) -> str:
    return f"{PAIRING_CODES}/{code}"


def loggable(path: str) -> str:
    """A path fit for a log line: a pairing code is a secret until used."""
    return f"{PAIRING_CODES}/<code>" if path.startswith(f"{PAIRING_CODES}/") else path


# ---------------------------------------------------------------- history buckets


def bucket_bounds(ts_ms: int, size: str) -> tuple[str, int, int]:
    """(bucket id, start ms, end ms) of the UTC hour or day holding `ts_ms`."""
    t = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
    if size == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(days=1)
        bucket_id = start.strftime("%Y-%m-%d")
    else:
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(hours=1)
        bucket_id = start.strftime("%Y-%m-%dT%H")
    return bucket_id, int(start.timestamp() * 1000), int(end.timestamp() * 1000)


# ---------------------------------------------------------------- device documents


def device_identity(d: DeviceRecord) -> dict[str, Any]:
    """What the registry knows: written at start and when a device is added."""
    return {
        "device_id": d.id,
        "name": d.name,
        "sensors": list(d.sensors),
        "actuators": list(d.actuators),
        "fw": d.fw,
        "interval_s": d.interval_s,
        "registered_at": at(d.created_at_ms),
    }


def reading_fields(
    event_id: int, ts_ms: int, at_ms: int, seq: int, values: Mapping[str, float]
) -> dict[str, Any]:
    return {
        "readings": dict(values),
        "readings_at": at(ts_ms),
        "seq": seq,
        "last_seen": at(at_ms),
        "event_id": event_id,
    }


def presence_fields(event_id: int, state: str, cause: str, at_ms: int) -> dict[str, Any]:
    return {
        "online": state in ("online", "late"),
        "presence": state,
        "presence_cause": cause,
        "presence_since": at(at_ms),
        "event_id": event_id,
    }


def error_fields(event_id: int, data: Mapping[str, Any], at_ms: int) -> dict[str, Any]:
    return {
        "last_error": {
            "kind": str(data.get("kind", "")),
            "message": str(data.get("message", ""))[:500],
            "at": at(at_ms),
        },
        "event_id": event_id,
    }


# ---------------------------------------------------------------- firmware rollouts

_ROLLOUT_STATE = {
    "rollout_started": "running",
    "pause": "paused",
    "resume": "running",
    "abort": "aborted",
    "rollout_halted": "halted",
    "rollout_done": "done",
}


def rollout_fields(event_id: int, data: Mapping[str, Any], at_ms: int) -> dict[str, Any]:
    """A rollout document from one `firmware` event: an admin action, or a device's step."""
    out: dict[str, Any] = {
        "rollout_id": data.get("rollout"),
        "version": data.get("version"),
        "updated_at": at(at_ms),
        "event_id": event_id,
    }
    action = data.get("action")
    if action in _ROLLOUT_STATE:
        out["state"] = _ROLLOUT_STATE[str(action)]
        out["reason"] = data.get("reason")
    if action == "rollout_started":
        out["started_at"] = at(at_ms)
        out["waves"] = data.get("waves")
    if action == "wave_started":
        out["wave_reason"] = data.get("reason")
    return out


def rollout_device_fields(
    event_id: int, device_id: str, data: Mapping[str, Any], at_ms: int
) -> dict[str, Any]:
    """One device's step, in its rollout's document (`devices.<id>`)."""
    return {
        "devices": {device_id: firmware_step(data, at_ms)},
        "updated_at": at(at_ms),
        "event_id": event_id,
    }


def firmware_step(data: Mapping[str, Any], at_ms: int) -> dict[str, Any]:
    return {
        "rollout_id": data.get("rollout"),
        "version": data.get("version"),
        "wave": (data["wave"] + 1) if isinstance(data.get("wave"), int) else None,
        "state": data.get("state"),
        "reason": str(data.get("reason") or "")[:500] or None,
        "at": at(at_ms),
    }


# ---------------------------------------------------------------- command documents

_STATE_TIME = {"queued": "queued_at", "sent": "sent_at"}
FINAL_COMMAND_STATES = frozenset({"acked", "failed", "expired", "cancelled", "superseded"})


def command_fields(
    event_id: int, data: Mapping[str, Any], at_ms: int, keep_days: float
) -> dict[str, Any]:
    """The broker's part of a command document, from one `command` event."""
    state = str(data.get("state", ""))
    out: dict[str, Any] = {"event_id": event_id, "updated_at": at(at_ms)}
    if state != "late_ack":
        out["state"] = state
    if "attempt" in data:
        out["attempts"] = data["attempt"]
    if state in _STATE_TIME and state != "sent":
        out[_STATE_TIME[state]] = at(at_ms)
    if state == "sent" and data.get("attempt") == 1:
        out["sent_at"] = at(at_ms)
    if state in FINAL_COMMAND_STATES:
        out["final_at"] = at(at_ms)
        out["expire_at"] = at(at_ms + keep_days * 86_400_000)
        if state != "acked":
            out["error"] = data.get("detail") or state
    if "result" in data:
        out["result"] = data["result"]
    if "rtt_ms" in data:
        out["rtt_ms"] = data["rtt_ms"]
    if "late_ack" in data:
        out["late_ack"] = data["late_ack"]
    return out


def strip(data: Mapping[str, Any], broker_fields: frozenset[str] | set[str]) -> dict[str, Any]:
    """A server-written document without what the broker wrote into it."""
    return {k: v for k, v in data.items() if k not in broker_fields}
