"""The threshold rule value: `when <reading> <op> <threshold> then <action> <args>` + guards.

A `Rule` is checked when it is built (`RuleError` lists every reason at once), so
code inside the broker can trust it. `parse_rule` / `rule_to_dict` are the JSON
shape used by the API, the store and Firestore; `problems_for_device` checks a
rule against what a device declared (the API answers 422 with those reasons).
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeGuard

from planty_broker.domain.models import DeviceRecord
from planty_broker.domain.rules.clock import LocalClock, TimeWindow
from planty_broker.errors import PlantyError
from planty_broker.protocol import ACTUATOR_VERBS, BUILTIN_ACTIONS, split_action, valid_device_id

ALL_DEVICES = "*"
DEFAULT_STALE_AFTER_S = 900.0  # 15 min: older readings never move an actuator
DEFAULT_HOLD_S = 1800.0  # 30 min: a manual command wins over the rule for this long
RULE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
READING_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class RuleError(PlantyError, ValueError):
    """A rule that cannot work; `reasons` holds one clear sentence per problem."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("; ".join(self.reasons))


class Op(StrEnum):
    """Comparison of the reading against the threshold."""

    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="

    @property
    def below(self) -> bool:
        """True for `<`/`<=`: the rule acts on low readings and re-arms above."""
        return self is Op.LT or self is Op.LE


_COMPARE: dict[Op, Callable[[float, float], bool]] = {
    Op.LT: operator.lt,
    Op.LE: operator.le,
    Op.GT: operator.gt,
    Op.GE: operator.ge,
}


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class Rule:
    """One threshold rule for one device, a group of devices, or every device (`"*"`).

    `devices` is `("dev-1",)`, `("dev-1", "dev-2")` or `("*",)`. `rearm` (default:
    `threshold`) is the hysteresis bound the reading must reach again before the
    rule may fire a second time. Budgets count rule fires per local day in `tz`.
    """

    id: str
    devices: tuple[str, ...]
    reading: str
    op: Op
    threshold: float
    action: str
    args: dict[str, Any] = field(default_factory=dict)
    rearm: float | None = None
    window: TimeWindow | None = None
    tz: str = "UTC"
    cooldown_s: float = 0.0
    max_fires_per_day: int | None = None
    max_seconds_per_day: float | None = None
    stale_after_s: float | None = DEFAULT_STALE_AFTER_S
    hold_s: float = DEFAULT_HOLD_S
    enabled: bool = True
    # Derived once, for the hot path; not part of the value.
    fires: Callable[[float, float], bool] = field(init=False, repr=False, compare=False)
    rearm_at: float = field(init=False, repr=False, compare=False)
    seconds: float = field(init=False, repr=False, compare=False)
    actuator: str | None = field(init=False, repr=False, compare=False)
    clock: LocalClock = field(init=False, repr=False, compare=False)
    has_calendar: bool = field(init=False, repr=False, compare=False)  # window or daily budget
    # Closed value bands where a reading changes nothing (see rules_eval.quiet_band).
    quiet_idle: tuple[float, float] = field(init=False, repr=False, compare=False)
    quiet_run: tuple[float, float] = field(init=False, repr=False, compare=False)
    quiet_disarmed: tuple[float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "devices", tuple(self.devices))
        if not isinstance(self.op, str) or self.op not in Op._value2member_map_:
            raise RuleError([f"op {self.op!r} must be one of {', '.join(o.value for o in Op)}"])
        set_(self, "op", Op(self.op))
        set_(self, "args", dict(self.args))
        reasons = _structural_problems(self)
        clock: LocalClock | None = None
        try:
            clock = LocalClock(self.tz)
        except ValueError as exc:
            reasons.append(str(exc))
        except AttributeError:
            reasons.append(
                f"tz {self.tz!r} must be a string like 'UTC', '+02:00' or 'Europe/Paris'"
            )
        if reasons or clock is None:
            raise RuleError(reasons)
        seconds = self.args.get("seconds")
        set_(self, "fires", _COMPARE[self.op])
        set_(self, "rearm_at", float(self.rearm if self.rearm is not None else self.threshold))
        set_(self, "seconds", float(seconds) if _is_number(seconds) else 0.0)
        set_(self, "actuator", split_action(self.action)[0])
        set_(self, "clock", clock)
        _set_quiet_bands(self)
        set_(
            self,
            "has_calendar",
            self.window is not None
            or self.max_fires_per_day is not None
            or self.max_seconds_per_day is not None,
        )

    def applies_to(self, device_id: str) -> bool:
        """True when this rule watches `device_id`."""
        return self.devices == (ALL_DEVICES,) or device_id in self.devices

    @property
    def is_selector(self) -> bool:
        """True for a group or `"*"` rule (state is made per device on first reading)."""
        return len(self.devices) != 1 or self.devices[0] == ALL_DEVICES

    def describe(self) -> str:
        """`soil_moisture < 0.3 -> pump.on {"seconds": 20}` for logs and history."""
        args = " " + ", ".join(f"{k}={v}" for k, v in self.args.items()) if self.args else ""
        return f"{self.reading} {self.op.value} {self.threshold:g} -> {self.action}{args}"


def _set_quiet_bands(rule: Rule) -> None:
    """Precompute the value bands in which `evaluate` has nothing to do, per rule state.

    idle (armed, no suppression run): the condition is not met.
    run (armed, suppression run going on): not met, and not past the re-arm bound.
    disarmed: not past the re-arm bound (a met condition is a non-event `disarmed`).
    Strict bounds become closed ones with `math.nextafter`, so the test is `lo <= v <= hi`.
    """
    t, r, inf = float(rule.threshold), rule.rearm_at, math.inf
    strict = rule.op is Op.LT or rule.op is Op.GT
    if rule.op.below:  # fires when v < t (or <=); re-arms when v >= r (or >)
        not_met = t if strict else math.nextafter(t, inf)
        not_rearmed = math.nextafter(r, -inf) if strict else r
        bands = ((not_met, inf), (not_met, not_rearmed), (-inf, not_rearmed))
    else:  # fires when v > t (or >=); re-arms when v <= r (or <)
        not_met = t if strict else math.nextafter(t, -inf)
        not_rearmed = math.nextafter(r, inf) if strict else r
        bands = ((-inf, not_met), (not_rearmed, not_met), (not_rearmed, inf))
    for name, band in zip(("quiet_idle", "quiet_run", "quiet_disarmed"), bands, strict=True):
        object.__setattr__(rule, name, band)


def _structural_problems(rule: Rule) -> list[str]:
    """Every reason the rule cannot work, whatever device it runs on."""
    reasons: list[str] = []
    if not isinstance(rule.id, str) or not RULE_ID_RE.match(rule.id):
        reasons.append(f"rule id {rule.id!r} must be 1-128 of letters, digits, '.', '_', ':', '-'")
    reasons += _device_problems(rule.devices)
    if not isinstance(rule.reading, str) or not READING_RE.match(rule.reading):
        reasons.append(f"reading {rule.reading!r} must be 1-64 of letters, digits, '_', '.', '-'")
    reasons += _bound_problems(rule)
    reasons += _action_problems(rule.action, rule.args)
    if not _is_number(rule.cooldown_s) or rule.cooldown_s < 0:
        reasons.append(f"cooldown_s {rule.cooldown_s!r} must be a number >= 0")
    if rule.max_fires_per_day is not None and (
        not isinstance(rule.max_fires_per_day, int) or rule.max_fires_per_day < 1
    ):
        reasons.append(f"max_fires_per_day {rule.max_fires_per_day!r} must be an integer >= 1")
    reasons += _seconds_budget_problems(rule)
    if rule.stale_after_s is not None and (
        not _is_number(rule.stale_after_s) or rule.stale_after_s <= 0
    ):
        reasons.append(f"stale_after_s {rule.stale_after_s!r} must be a number > 0 (or null)")
    if not _is_number(rule.hold_s) or rule.hold_s < 0:
        reasons.append(f"hold_s {rule.hold_s!r} must be a number >= 0")
    if rule.window is not None and not isinstance(rule.window, TimeWindow):
        reasons.append("window must be a TimeWindow, e.g. TimeWindow.parse('06:00-20:00')")
    return reasons


def _device_problems(devices: tuple[str, ...]) -> list[str]:
    if not devices:
        return ["devices is empty: give a device id, a list of device ids, or '*' for all"]
    if ALL_DEVICES in devices:
        return [] if devices == (ALL_DEVICES,) else ["'*' (all devices) cannot be mixed with ids"]
    bad = [d for d in devices if not isinstance(d, str) or not valid_device_id(d)]
    if bad:
        return [f"device id {bad[0]!r} is not valid (a-z, 0-9, '-', 3-64 characters)"]
    if len(set(devices)) != len(devices):
        return ["devices lists the same device twice"]
    return []


def _bound_problems(rule: Rule) -> list[str]:
    if not _is_number(rule.threshold):
        return [f"threshold {rule.threshold!r} must be a finite number"]
    if rule.rearm is None:
        return []
    if not _is_number(rule.rearm):
        return [f"rearm {rule.rearm!r} must be a finite number (or null for the threshold)"]
    cond = f"'{rule.reading} {Op(rule.op).value} {rule.threshold:g}'"
    if Op(rule.op).below and rule.rearm < rule.threshold:
        return [
            f"rearm {rule.rearm:g} must be >= threshold {rule.threshold:g} for {cond}: "
            "the rule re-arms once the reading has recovered up to it"
        ]
    if not Op(rule.op).below and rule.rearm > rule.threshold:
        return [
            f"rearm {rule.rearm:g} must be <= threshold {rule.threshold:g} for {cond}: "
            "the rule re-arms once the reading has come back down to it"
        ]
    return []


def _action_problems(action: str, args: Mapping[str, Any]) -> list[str]:
    if not isinstance(action, str) or not action:
        return ["action is empty: use '{actuator}.on|off|set' (e.g. pump.on) or ping/read/config"]
    actuator, verb = split_action(action)
    reasons: list[str] = []
    if actuator is None:
        if verb not in BUILTIN_ACTIONS:
            reasons.append(
                f"action {action!r} is not '{{actuator}}.on|off|set' nor one of "
                f"{', '.join(BUILTIN_ACTIONS)}"
            )
    elif verb not in ACTUATOR_VERBS or not actuator:
        reasons.append(f"action {action!r}: the verb must be one of {', '.join(ACTUATOR_VERBS)}")
    elif verb == "set" and not _is_number(args.get("value")):
        reasons.append(f"action {action!r} needs a number in args.value")
    seconds = args.get("seconds")
    if seconds is not None and (not _is_number(seconds) or seconds <= 0):
        reasons.append(f"args.seconds {seconds!r} must be a number > 0")
    return reasons


def _seconds_budget_problems(rule: Rule) -> list[str]:
    budget = rule.max_seconds_per_day
    if budget is None:
        return []
    if not _is_number(budget) or budget <= 0:
        return [f"max_seconds_per_day {budget!r} must be a number > 0 (or null)"]
    seconds = rule.args.get("seconds")
    if not _is_number(seconds):
        return [
            "max_seconds_per_day needs args.seconds (how long each fire runs the actuator), "
            f'e.g. {rule.action} {{"seconds": 20}}'
        ]
    if seconds > budget:
        return [f"args.seconds {seconds:g} is above max_seconds_per_day {budget:g}: it never fires"]
    return []


# ---------------------------------------------------------------- device check


def problems_for_device(
    rule: Rule,
    sensors: Sequence[str] | None,
    actuators: Sequence[str] | None,
    device_id: str | None = None,
) -> list[str]:
    """Why `rule` cannot work on a device with these sensors/actuators (None: not declared yet)."""
    where = f"device '{device_id}': " if device_id else ""
    reasons: list[str] = []
    if sensors is not None and rule.reading not in sensors:
        hint = difflib.get_close_matches(rule.reading, list(sensors), n=1)
        reasons.append(
            f"{where}reading '{rule.reading}' is not one of the device's sensors: "
            f"{', '.join(sensors) or 'none'}" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        )
    if actuators is not None and rule.actuator is not None and rule.actuator not in actuators:
        reasons.append(
            f"{where}actuator '{rule.actuator}' not declared by device: "
            f"has {', '.join(actuators) or 'none'}"
        )
    return reasons


def problems_for_record(rule: Rule, record: DeviceRecord) -> list[str]:
    """`problems_for_device` for a stored device; one that never sent `status` is not checked."""
    if not record.sensors and not record.actuators:
        return []
    return problems_for_device(rule, record.sensors, record.actuators, record.id)


# ---------------------------------------------------------------- JSON shape

_FIELDS = (
    "id", "devices", "reading", "op", "threshold", "action", "args", "rearm", "window", "tz",
    "cooldown_s", "max_fires_per_day", "max_seconds_per_day", "stale_after_s", "hold_s", "enabled",
)  # fmt: skip
_REQUIRED = ("id", "devices", "reading", "op", "threshold", "action")
# Stand-ins for missing required fields, so parse_rule reports the other fields' problems too.
_PLACEHOLDERS: dict[str, Any] = {
    "id": "missing",
    "devices": (ALL_DEVICES,),
    "reading": "missing",
    "threshold": 0.0,
    "action": "ping",
}


def parse_rule(data: Mapping[str, Any], *, default_tz: str = "UTC") -> Rule:
    """A rule from its JSON object; raises `RuleError` listing every problem found."""
    reasons, kwargs = _shape(data, default_tz)
    try:
        rule = Rule(**kwargs)
    except RuleError as exc:  # the value-level reasons, reported with the shape ones
        reasons += [r for r in exc.reasons if r not in reasons]
    except (TypeError, ValueError) as exc:
        reasons = reasons or [f"rule is not valid: {exc}"]
    if reasons:
        raise RuleError(reasons)
    return rule


def _shape(data: Mapping[str, Any], default_tz: str) -> tuple[list[str], dict[str, Any]]:
    """Type-level reasons, and constructor arguments with stand-ins where a field is unusable."""
    reasons = [f"unknown field '{k}'" for k in data if k not in _FIELDS]
    reasons += [f"missing field '{k}'" for k in _REQUIRED if k not in data]
    kwargs = {k: data[k] for k in _FIELDS if k in data}
    kwargs["tz"] = data["tz"] if isinstance(data.get("tz"), str) else default_tz
    devices = data.get("devices")
    if isinstance(devices, str):
        kwargs["devices"] = (devices,)
    elif isinstance(devices, (list, tuple)):
        kwargs["devices"] = tuple(devices)
    elif devices is not None:
        reasons.append("devices must be a device id, a list of device ids, or '*'")
        kwargs.pop("devices")
    op = data.get("op")
    if not isinstance(op, str) or op not in Op._value2member_map_:
        if op is not None:
            reasons.append(f"op {op!r} must be one of {', '.join(o.value for o in Op)}")
        kwargs["op"] = Op.LT  # stand-in so the other fields still get checked
        kwargs.pop("rearm", None)  # its side depends on the op
    window = data.get("window")
    kwargs["window"] = None
    if isinstance(window, str):
        try:
            kwargs["window"] = TimeWindow.parse(window)
        except ValueError as exc:
            reasons.append(str(exc))
    elif window is not None:
        reasons.append("window must be a string like '06:00-20:00' (or null)")
    if isinstance(data.get("args", {}), Mapping):
        kwargs["args"] = dict(data.get("args", {}))
    else:
        reasons.append('args must be an object, e.g. {"seconds": 20}')
        kwargs.pop("args")
    if not isinstance(data.get("enabled", True), bool):
        reasons.append("enabled must be true or false")
    reasons += [
        f"{k} must be a string" for k in ("id", "reading", "action", "tz")
        if k in data and not isinstance(data[k], str)
    ]  # fmt: skip
    for key, placeholder in _PLACEHOLDERS.items():
        if kwargs.get(key) is None:
            kwargs[key] = placeholder
            if key == "threshold":
                kwargs.pop("rearm", None)
    return reasons, kwargs


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """The JSON object `parse_rule` reads back (window as "HH:MM-HH:MM", '*' as a string)."""
    out: dict[str, Any] = {k: getattr(rule, k) for k in _FIELDS}
    out["devices"] = ALL_DEVICES if rule.devices == (ALL_DEVICES,) else list(rule.devices)
    out["op"] = rule.op.value
    out["window"] = None if rule.window is None else str(rule.window)
    out["args"] = dict(rule.args)
    return out
