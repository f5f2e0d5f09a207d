"""Commands to devices: states, the state machine, validation, coalescing, pacing. No I/O.

A command is `queued` when stored, `sent` each time it is published (the same id on
every re-send, so the device's dedup runs it once), then final: `acked` (the device
did it), `failed` (the device refused, or no ack after `max_attempts` sends),
`expired` (its deadline passed first), `cancelled` (by the server, before it was
sent) or `superseded` (a newer command for the same actuator replaced it while
both waited). Every change is a `CommandChange`: the command's new row plus one
history row, persisted together with its event.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from planty_broker.errors import PlantyError
from planty_broker.protocol import ACTUATOR_VERBS, BUILTIN_ACTIONS, Ack, split_action


class CommandState(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    ACKED = "acked"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


FINAL_STATES = frozenset(
    {
        CommandState.ACKED,
        CommandState.FAILED,
        CommandState.EXPIRED,
        CommandState.CANCELLED,
        CommandState.SUPERSEDED,
    }
)
ACTIVE_STATES = (CommandState.QUEUED, CommandState.SENT)

# Allowed moves; `sent -> sent` is a re-send. A queued command may be acked directly: its
# `sent` row was not yet stored when the gateway died, but the device did receive it.
_ALLOWED: dict[CommandState, frozenset[CommandState]] = {
    CommandState.QUEUED: frozenset(
        {
            CommandState.SENT,
            CommandState.ACKED,
            CommandState.FAILED,
            CommandState.EXPIRED,
            CommandState.CANCELLED,
            CommandState.SUPERSEDED,
        }
    ),
    CommandState.SENT: frozenset(
        {CommandState.SENT, CommandState.ACKED, CommandState.FAILED, CommandState.EXPIRED}
    ),
}

LATE_ACK = "late_ack"  # a history row (not a state): an ack that came after the command ended


class CommandError(PlantyError, ValueError):
    """Root of command errors a caller can fix; the message says how."""


class InvalidActionError(CommandError):
    """The action is not one the device declared or a built-in; `valid` lists what is."""

    def __init__(self, message: str, valid: list[str]) -> None:
        super().__init__(message)
        self.valid = valid


class InvalidArgsError(CommandError):
    pass


class IllegalTransitionError(PlantyError, RuntimeError):
    """A bug: a final command cannot change state."""


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command as stored: what, for whom, its deadline, where it is and how it ended."""

    id: str
    device_id: str
    action: str
    args: dict[str, Any]
    created_ms: int
    exp_ms: int  # the deadline, `exp` on the wire: never sent at or after it
    state: CommandState = CommandState.QUEUED
    updated_ms: int = 0
    origin: str = "api"  # who asked: api, rule, firestore, ...
    attempts: int = 0  # how many times it was published
    sent_ms: int | None = None  # first send
    last_sent_ms: int | None = None
    final_ms: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    superseded_by: str | None = None
    rtt_ms: float | None = None  # last send -> ack
    late_ack: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def actuator(self) -> str | None:
        return split_action(self.action)[0]


@dataclass(frozen=True, slots=True)
class CommandTransition:
    """One history row: the state entered (or `late_ack`), when, at which attempt, why."""

    command_id: str
    state: str
    at_ms: int
    attempt: int
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class CommandChange:
    """What to persist in one go: the row after the change, its history row, new or not."""

    record: CommandRecord
    transition: CommandTransition
    new: bool = False


# ---------------------------------------------------------------- ids

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Ids must be unique, not secret: a PRNG seeded from the OS once is enough, and
# os.urandom per id (a system call) was measurable under load.
_rng = random.Random()  # noqa: S311


# Two Crockford characters per 10 bits: 13 steps per id instead of 26 (issue 17's profile).
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]


def new_command_id(now_ms: int | None = None) -> str:
    """`c-` + a ULID (48-bit time, 80 random bits): unique, sortable by creation time."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms << 80) | _rng.getrandbits(80)
    pairs = _PAIRS
    return "c-" + "".join(
        [
            pairs[(value >> shift) & 1023]
            for shift in (120, 110, 100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 0)
        ]
    )


def valid_command_id(cid: str) -> bool:
    """Ids a server may choose itself (idempotent submit): 3-64 of A-Z a-z 0-9 - _ . :"""
    return 3 <= len(cid) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_.:") for c in cid)


# ---------------------------------------------------------------- validation


def valid_actions(actuators: tuple[str, ...] | list[str]) -> list[str]:
    """Built-ins plus `{actuator}.{on,off,set}` for every declared actuator."""
    return [*BUILTIN_ACTIONS, *(f"{a}.{v}" for a in actuators for v in ACTUATOR_VERBS)]


@functools.lru_cache(maxsize=4096)
def _valid_set(actuators: tuple[str, ...]) -> frozenset[str]:
    """`valid_actions` as a set, per set of actuators: built once, not per command (issue 17:
    the list was ~9 % of the command service's own time at 1,000 commands/s)."""
    return frozenset(valid_actions(actuators))


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def prepare(
    action: str,
    args: dict[str, Any],
    actuators: tuple[str, ...],
    max_on_seconds: float,
    max_on_by_actuator: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Check `action` against the device and its args; returns the args to send.

    `{actuator}.on` without `seconds` gets the actuator's limit (`max_on_by_actuator`,
    else `max_on_seconds`), and more than that is refused, so a lost `off` can never
    leave a pump running longer.
    """
    if action not in _valid_set(tuple(actuators)):
        valid = valid_actions(actuators)
        declared = (
            f"it declared actuators {', '.join(actuators)}"
            if actuators
            else "it has not declared any actuator yet: its status lists none, and none were "
            "given when it was registered (POST /api/v1/devices with `actuators` or `profile`)"
        )
        raise InvalidActionError(
            f"action {action!r} is not valid for this device ({declared}); "
            f"valid: {', '.join(valid)}",
            valid,
        )
    actuator, verb = split_action(action)
    out = dict(args)
    if actuator is None:
        if verb == "config":
            unknown = sorted(set(args) - {"interval_s"})
            interval = _number(args.get("interval_s"))
            if unknown or interval is None or interval <= 0:
                raise InvalidArgsError('config needs args {"interval_s": <positive number>}')
        return out
    if verb == "on":
        setting = "commands.max_on_seconds"
        if max_on_by_actuator and actuator in max_on_by_actuator:
            max_on_seconds = max_on_by_actuator[actuator]
            setting = f"commands.max_on_seconds_by_actuator.{actuator}"
        if "seconds" not in args or args["seconds"] is None:
            seconds: float = max_on_seconds
            out["seconds"] = int(seconds) if float(seconds).is_integer() else seconds
        else:
            given = _number(args["seconds"])
            if given is None or given <= 0:
                raise InvalidArgsError(f"{action}: seconds must be a positive number")
            if given > max_on_seconds:
                raise InvalidArgsError(
                    f"{action}: seconds must be at most {max_on_seconds:g} "
                    f"({setting}, the actuator safety limit)"
                )
    elif verb == "set":
        value = _number(args.get("value"))
        if value is None:
            raise InvalidArgsError(f'{action} needs args {{"value": <number>}}')
    return out


def supersedes(new: CommandRecord, old: CommandRecord) -> bool:
    """A newer actuator command replaces an older one for the same actuator still waiting."""
    return (
        old.state is CommandState.QUEUED
        and old.device_id == new.device_id
        and old.id != new.id
        and new.actuator is not None
        and old.actuator == new.actuator
    )


# ---------------------------------------------------------------- the state machine

_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(CommandRecord))
_FIELD_SET = frozenset(_RECORD_FIELDS)
_record_values = operator.attrgetter(*_RECORD_FIELDS)
_new_object = object.__new__
_set_field = object.__setattr__


def _with(rec: CommandRecord, **changes: Any) -> CommandRecord:
    """`dataclasses.replace(rec, **changes)` for the hot path (three records per command):
    replace looks the fields up and runs the frozen `__init__` (one `object.__setattr__` call
    per field through keyword arguments) on every call, ~9 us against ~4 us here."""
    if not changes.keys() <= _FIELD_SET:
        raise TypeError(f"CommandRecord has no field {sorted(changes.keys() - _FIELD_SET)}")
    new = _new_object(CommandRecord)
    get = changes.get
    for name, value in zip(_RECORD_FIELDS, _record_values(rec), strict=True):
        _set_field(new, name, get(name, value))
    return new


def _move(
    rec: CommandRecord, state: CommandState, now_ms: int, detail: str | None, **fields: Any
) -> CommandChange:
    if rec.final or state not in _ALLOWED[rec.state]:
        raise IllegalTransitionError(
            f"command {rec.id}: cannot go from {rec.state.value} to {state.value}"
        )
    final_ms = now_ms if state in FINAL_STATES else None
    new = _with(rec, state=state, updated_ms=now_ms, final_ms=final_ms, **fields)
    return CommandChange(new, CommandTransition(rec.id, state.value, now_ms, new.attempts, detail))


def queued(rec: CommandRecord) -> CommandChange:
    """The first row of a new command."""
    rec = _with(rec, state=CommandState.QUEUED, updated_ms=rec.created_ms)
    t = CommandTransition(rec.id, CommandState.QUEUED.value, rec.created_ms, 0, None)
    return CommandChange(rec, t, new=True)


def sent(rec: CommandRecord, now_ms: int) -> CommandChange:
    attempts = rec.attempts + 1
    return _move(
        rec,
        CommandState.SENT,
        now_ms,
        None if attempts == 1 else f"re-sent (attempt {attempts})",
        attempts=attempts,
        sent_ms=rec.sent_ms if rec.sent_ms is not None else now_ms,
        last_sent_ms=now_ms,
    )


def acked(rec: CommandRecord, ack: Ack, now_ms: int) -> CommandChange:
    """The device answered: ok -> acked; `expired` -> expired; any other error -> failed."""
    rtt = float(now_ms - rec.last_sent_ms) if rec.last_sent_ms is not None else None
    if ack.ok:
        return _move(rec, CommandState.ACKED, now_ms, None, result=ack.result, rtt_ms=rtt)
    error = ack.error or "refused without a reason"
    state = CommandState.EXPIRED if error == "expired" else CommandState.FAILED
    return _move(rec, state, now_ms, f"device: {error}", error=error, rtt_ms=rtt)


def ended(rec: CommandRecord, state: CommandState, now_ms: int, reason: str) -> CommandChange:
    """failed / expired / cancelled by the broker (not by an ack), with the reason."""
    return _move(rec, state, now_ms, reason, error=reason)


def superseded(rec: CommandRecord, by: CommandRecord, now_ms: int) -> CommandChange:
    return _move(
        rec,
        CommandState.SUPERSEDED,
        now_ms,
        f"superseded by {by.id} ({by.action})",
        superseded_by=by.id,
        error=f"superseded by {by.id} ({by.action})",
    )


def late_ack(rec: CommandRecord, ack: Ack, now_ms: int) -> CommandChange:
    """An ack for a command already `failed`/`expired`: the state stays, the fact is kept."""
    info: dict[str, Any] = {"at_ms": now_ms, "ok": ack.ok}
    if ack.result is not None:
        info["result"] = ack.result
    if ack.error is not None:
        info["error"] = ack.error
    new = _with(rec, late_ack=info)
    detail = "late ack: ok" if ack.ok else f"late ack: {ack.error}"
    return CommandChange(new, CommandTransition(rec.id, LATE_ACK, now_ms, rec.attempts, detail))


def event_data(change: CommandChange) -> dict[str, Any]:
    """The `command` event of a change: enough for a consumer to follow a command."""
    r, t = change.record, change.transition
    data: dict[str, Any] = {
        "id": r.id,
        "action": r.action,
        "state": t.state,
        "attempt": t.attempt,
        "origin": r.origin,
    }
    if change.new:
        data["args"] = r.args
        data["exp_ms"] = r.exp_ms
    if t.detail:
        data["detail"] = t.detail
    if t.state == CommandState.ACKED.value and r.result is not None:
        data["result"] = r.result
    if r.rtt_ms is not None and t.state in FINAL_STATES:
        data["rtt_ms"] = r.rtt_ms
    if t.state == LATE_ACK and r.late_ack is not None:
        data["late_ack"] = r.late_ack
    return data


# ---------------------------------------------------------------- pacing


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; times in seconds, passed in."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def tokens(self, now: float) -> float:
        """Tokens available now."""
        self._refill(now)
        return self._tokens

    def wait_s(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate


@dataclass(frozen=True, slots=True)
class SendLeases:
    """What `CommandStore.lease_commands` answered (issue 15: outbox rows leased per command).

    `granted`: this owner may send these now. `held_until`: refused, another owner holds the
    lease until then (ms). A refused id in neither was busy at that moment (PostgreSQL skipped
    its row, locked by another transaction) or is not a stored command.
    """

    granted: frozenset[str]
    held_until: Mapping[str, int]
