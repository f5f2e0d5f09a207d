"""The rule evaluator: one reading in, at most one `Decision` out, per (rule, device).

Pure: the caller passes the reading's timestamp and `now_ms` (the broker's clock)
and keeps one mutable `RuleState` per (rule, device). Order of the guards when the
condition is met and the rule is armed: stale, override (manual hold),
outside_window, budget, cooldown; the first that applies is the reason.

Events: every fire is an event. The first suppression of a would-be fire in a run
is an event; repeats of the same reason in the same run are returned with
`event=False` (and a `repeat` count) so a rule held off all night by its window
writes one history line, not one per reading. A run ends with a fire or when the
reading passes the re-arm bound. `disarmed` (already fired for this excursion,
waiting to re-arm) is never an event: the fire before it explains it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec

from planty_broker.domain.rules.model import Rule


class Outcome(StrEnum):
    """What the rule did with a reading (or noticed without one)."""

    FIRE = "fire"
    SUPPRESSED = "suppressed"
    WARNING = "warning"


class Reason(StrEnum):
    """Why a would-be fire did not happen, or what a warning is about."""

    COOLDOWN = "cooldown"
    BUDGET = "budget"
    STALE = "stale"
    OVERRIDE = "override"
    OUTSIDE_WINDOW = "outside_window"
    DISARMED = "disarmed"
    SENSOR_SILENT = "sensor_silent"


@dataclass(slots=True)
class RuleState:
    """What one rule remembers about one device: hysteresis, last fire, today's budget, hold."""

    device_id: str
    armed: bool = True
    last_fire_ms: int | None = None
    day: int | None = None  # local day number the counters belong to
    fires_today: int = 0
    seconds_today: float = 0.0
    manual_hold_until_ms: int = 0
    last_seen_ms: int | None = None  # broker time of the last reading of the rule's sensor
    silence_warned_for_ms: int | None = None  # `last_seen_ms` already warned about
    run_reason: Reason | None = None  # suppression run in progress (history de-duplication)
    run_repeats: int = 0
    idle: bool = True  # armed and no run in progress: a non-matching reading changes nothing


class Decision(msgspec.Struct, frozen=True):
    """A fire (send `action` with `args`), a suppression with its reason, or a warning.

    A msgspec Struct: built in C, since a busy rule set makes one per reading.
    `detail` (one sentence for the history) is filled when `event` is True.
    """

    outcome: Outcome
    rule_id: str
    device_id: str
    reading: str
    value: float | None
    reading_ts_ms: int | None
    at_ms: int
    action: str
    args: dict[str, Any] = {}
    reason: Reason | None = None
    detail: str = ""
    event: bool = True  # worth a line in the rule's history
    repeat: int = 1  # n-th consecutive suppression with this reason

    @property
    def fired(self) -> bool:
        return self.outcome is Outcome.FIRE

    def to_event(self) -> dict[str, Any]:
        """The JSON object stored in the rule's history."""
        return {
            "rule_id": self.rule_id,
            "device_id": self.device_id,
            "outcome": self.outcome.value,
            "reason": None if self.reason is None else self.reason.value,
            "reading": self.reading,
            "value": self.value,
            "reading_ts_ms": self.reading_ts_ms,
            "at_ms": self.at_ms,
            "action": self.action,
            "args": dict(self.args),
            "detail": self.detail,
        }


def human_ms(ms: float) -> str:
    """A duration for people: `45s`, `12m`, `3h05m`."""
    s = int(abs(ms) // 1000)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _roll_day(rule: Rule, state: RuleState, now_ms: int) -> int:
    """Reset the daily counters when the local day changed; returns the minute of day."""
    day, minute = rule.clock.local(now_ms)
    if state.day != day:
        state.day = day
        state.fires_today = 0
        state.seconds_today = 0.0
    return minute


def record_fire(rule: Rule, state: RuleState, at_ms: int) -> None:
    """Count a fire: disarm, start the cooldown, spend the budget (also to replay history)."""
    _roll_day(rule, state, at_ms)
    state.fires_today += 1
    state.seconds_today += rule.seconds
    state.last_fire_ms = at_ms
    state.armed = False
    state.idle = False
    state.run_reason = None
    state.run_repeats = 0


def note_manual_command(state: RuleState, now_ms: int, hold_s: float) -> None:
    """A manual command for this rule's actuator: the rule stays quiet for `hold_s`."""
    state.manual_hold_until_ms = max(state.manual_hold_until_ms, now_ms + int(hold_s * 1000))


_FIRE = Outcome.FIRE
_SUPPRESSED = Outcome.SUPPRESSED
_DISARMED = Reason.DISARMED


def evaluate(
    rule: Rule, state: RuleState, value: float, reading_ts_ms: int, now_ms: int
) -> Decision | None:
    """Feed one reading of `rule.reading`; None when the condition is not met (or disabled)."""
    state.last_seen_ms = now_ms
    if not rule.enabled:
        return None
    if not rule.fires(value, rule.threshold):
        if not state.idle:
            _maybe_rearm(rule, state, value, reading_ts_ms, now_ms)
        return None  # NaN lands here too: it never compares true
    if not state.armed:
        return Decision(
            _SUPPRESSED,
            rule.id,
            state.device_id,
            rule.reading,
            value,
            reading_ts_ms,
            now_ms,
            rule.action,
            rule.args,
            _DISARMED,
            "",
            False,
        )
    reason = _guard(rule, state, reading_ts_ms, now_ms)
    if reason is not None:
        return _suppress(rule, state, value, reading_ts_ms, now_ms, reason)
    record_fire(rule, state, now_ms)
    detail = f"{rule.reading} {value:g} {rule.op.value} {rule.threshold:g}"
    return Decision(
        _FIRE,
        rule.id,
        state.device_id,
        rule.reading,
        value,
        reading_ts_ms,
        now_ms,
        rule.action,
        rule.args,
        None,
        detail + _budget_note(rule, state),
    )


def quiet_band(rule: Rule, state: RuleState) -> tuple[float, float]:
    """Closed [lo, hi]: a reading in it makes `evaluate` return None or a non-event and
    change nothing but `last_seen_ms`. The index skips such readings without a call."""
    if not rule.enabled:
        return (-math.inf, math.inf)
    if not state.armed:
        return rule.quiet_disarmed
    return rule.quiet_idle if state.idle else rule.quiet_run


def _maybe_rearm(
    rule: Rule, state: RuleState, value: float, reading_ts_ms: int, now_ms: int
) -> None:
    """A fresh reading past the re-arm bound re-arms the rule and ends a suppression run."""
    if value != value or rule.fires(value, rule.rearm_at):  # noqa: PLR0124 - NaN check
        return
    if rule.stale_after_s is not None and _is_stale(rule, reading_ts_ms, now_ms):
        return
    state.armed = True
    state.idle = True
    state.run_reason = None
    state.run_repeats = 0


def _is_stale(rule: Rule, reading_ts_ms: int, now_ms: int) -> bool:
    assert rule.stale_after_s is not None
    return abs(now_ms - reading_ts_ms) > rule.stale_after_s * 1000


def _guard(rule: Rule, state: RuleState, reading_ts_ms: int, now_ms: int) -> Reason | None:
    """The first guard that stops an armed rule whose condition is met, or None to fire."""
    if rule.stale_after_s is not None and _is_stale(rule, reading_ts_ms, now_ms):
        return Reason.STALE
    if now_ms < state.manual_hold_until_ms:
        return Reason.OVERRIDE
    if rule.has_calendar:
        minute = _roll_day(rule, state, now_ms)
        if rule.window is not None and not rule.window.contains(minute):
            return Reason.OUTSIDE_WINDOW
        if rule.max_fires_per_day is not None and state.fires_today >= rule.max_fires_per_day:
            return Reason.BUDGET
        budget_s = rule.max_seconds_per_day
        if budget_s is not None and state.seconds_today + rule.seconds > budget_s:
            return Reason.BUDGET
    if state.last_fire_ms is not None and now_ms - state.last_fire_ms < rule.cooldown_s * 1000:
        return Reason.COOLDOWN
    return None


def _suppress(
    rule: Rule, state: RuleState, value: float, reading_ts_ms: int, now_ms: int, reason: Reason
) -> Decision:
    """A suppression; an event (with its sentence) only when it starts a run."""
    state.idle = False
    first = state.run_reason is not reason
    if first:
        state.run_reason, state.run_repeats = reason, 1
    else:
        state.run_repeats += 1
    return Decision(
        _SUPPRESSED,
        rule.id,
        state.device_id,
        rule.reading,
        value,
        reading_ts_ms,
        now_ms,
        rule.action,
        rule.args,
        reason,
        _why(rule, state, value, reading_ts_ms, now_ms, reason) if first else "",
        first,
        state.run_repeats,
    )


def _budget_note(rule: Rule, state: RuleState) -> str:
    parts = []
    if rule.max_fires_per_day is not None:
        parts.append(f"fire {state.fires_today} of {rule.max_fires_per_day} today")
    if rule.max_seconds_per_day is not None:
        parts.append(f"{state.seconds_today:g} of {rule.max_seconds_per_day:g} s today")
    return f" ({', '.join(parts)})" if parts else ""


def _why(
    rule: Rule, state: RuleState, value: float, reading_ts_ms: int, now_ms: int, reason: Reason
) -> str:
    """One sentence a user can read in the history."""
    cond = f"{rule.reading} {value:g} {rule.op.value} {rule.threshold:g}"
    if reason is Reason.STALE:
        age = now_ms - reading_ts_ms
        when = f"{human_ms(age)} old" if age >= 0 else f"dated {human_ms(age)} in the future"
        limit = human_ms((rule.stale_after_s or 0) * 1000)
        return f"{cond}, but the reading is {when} (limit {limit})"
    if reason is Reason.OVERRIDE:
        left = human_ms(state.manual_hold_until_ms - now_ms)
        return f"{cond}, but a manual {rule.actuator} command holds rules for another {left}"
    if reason is Reason.OUTSIDE_WINDOW:
        _, minute = rule.clock.local(now_ms)
        return (
            f"{cond}, but local time {minute // 60:02d}:{minute % 60:02d} is outside "
            f"{rule.window} ({rule.tz})"
        )
    if reason is Reason.BUDGET:
        return f"{cond}, but the daily budget is spent" + _budget_note(rule, state)
    ago = human_ms(now_ms - (state.last_fire_ms or now_ms))
    return f"{cond}, but it fired {ago} ago (cooldown {human_ms(rule.cooldown_s * 1000)})"


def check_silence(rule: Rule, state: RuleState, now_ms: int) -> Decision | None:
    """A warning once per silence when the rule's sensor sent nothing for `stale_after_s`.

    A state that never saw a reading starts its silence clock at the first check.
    """
    if rule.stale_after_s is None or not rule.enabled:
        return None
    if state.last_seen_ms is None:
        state.last_seen_ms = now_ms
        return None
    silent_ms = now_ms - state.last_seen_ms
    if silent_ms <= rule.stale_after_s * 1000 or state.silence_warned_for_ms == state.last_seen_ms:
        return None
    state.silence_warned_for_ms = state.last_seen_ms
    return Decision(
        Outcome.WARNING,
        rule.id,
        state.device_id,
        rule.reading,
        None,
        None,
        now_ms,
        rule.action,
        rule.args,
        reason=Reason.SENSOR_SILENT,
        detail=(
            f"no {rule.reading} reading for {human_ms(silent_ms)} "
            f"(limit {human_ms(rule.stale_after_s * 1000)}); {rule.action} cannot be triggered"
        ),
    )


def silent_sensors(entries: Iterable[tuple[Rule, RuleState]], now_ms: int) -> list[Decision]:
    """`check_silence` over many (rule, state) pairs; call it every few seconds."""
    out = []
    for rule, state in entries:
        decision = check_silence(rule, state, now_ms)
        if decision is not None:
            out.append(decision)
    return out
