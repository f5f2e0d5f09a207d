"""`set_thresholds`: the original design's shortcut, expanded into ordinary rules.

`PUT /api/v1/devices/{id}/thresholds {"temperature": {"max": 30},
"soil_moisture": {"min": 0.3}, "light": {"min": 200}}` becomes the rules below
(defaults in `SHORTCUTS`, documented in docs/rules.md). Rule ids are fixed
(`thr.{device}.{reading}.{min|max}[.off]`), so setting thresholds again replaces
the same rules, and a reading left out means its threshold rules go away.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from planty_broker.domain.rules.clock import TimeWindow
from planty_broker.domain.rules.model import (
    DEFAULT_HOLD_S,
    DEFAULT_STALE_AFTER_S,
    Op,
    Rule,
    RuleError,
    problems_for_device,
)

THRESHOLD_ID_PREFIX = "thr."
ALIASES = {"water": "soil_moisture"}  # the original design's name for soil moisture


@dataclass(frozen=True, slots=True)
class Shortcut:
    """How one `{reading: {bound: value}}` becomes a rule, and the defaults it gets."""

    reading: str
    bound: str  # "min" or "max"
    action: str
    args: Mapping[str, Any]
    rearm_delta: float  # added (min) or subtracted (max) from the threshold
    cooldown_s: float
    max_fires_per_day: int | None
    max_seconds_per_day: float | None
    valid: tuple[float, float]  # sane range of the threshold itself
    window: str | None = None
    rearm_relative: bool = False  # rearm_delta is a fraction of the threshold (lux)
    off_action: str | None = None  # a second rule switching the actuator off past the re-arm bound


SHORTCUTS: dict[tuple[str, str], Shortcut] = {
    # Dry soil: water 20 s, let it soak 30 min, at most 5 times / 120 s a day; re-arm at +0.10.
    ("soil_moisture", "min"): Shortcut(
        reading="soil_moisture",
        bound="min",
        action="pump.on",
        args={"seconds": 20},
        rearm_delta=0.10,
        cooldown_s=1800,
        max_fires_per_day=5,
        max_seconds_per_day=120,
        valid=(0.0, 1.0),
    ),
    # Dark in daytime: lamp on for an hour, 06:00-20:00 local; re-arm 25 % above the threshold.
    ("light", "min"): Shortcut(
        reading="light",
        bound="min",
        action="lamp.on",
        args={"seconds": 3600},
        rearm_delta=0.25,
        rearm_relative=True,
        cooldown_s=3600,
        max_fires_per_day=14,
        max_seconds_per_day=14 * 3600,
        valid=(0.0, 200_000.0),
        window="06:00-20:00",
    ),
    # Hot: fan on above max, off again below max - 2 (a thermostat); 10 min between starts.
    ("temperature", "max"): Shortcut(
        reading="temperature",
        bound="max",
        action="fan.on",
        args={},
        rearm_delta=2.0,
        cooldown_s=600,
        max_fires_per_day=48,
        max_seconds_per_day=None,
        valid=(-40.0, 85.0),
        off_action="fan.off",
    ),
}


def threshold_rule_prefix(device_id: str) -> str:
    """Ids of the rules `set_thresholds` made for a device all start with this."""
    return f"{THRESHOLD_ID_PREFIX}{device_id}."


def thresholds_to_rules(
    device_id: str,
    thresholds: Mapping[str, Any],
    actuators: Sequence[str] | None,
    *,
    sensors: Sequence[str] | None = None,
    tz: str = "UTC",
    hold_s: float = DEFAULT_HOLD_S,
    stale_after_s: float | None = DEFAULT_STALE_AFTER_S,
) -> list[Rule]:
    """Expand `set_thresholds` input into rules; `RuleError` lists every problem.

    `actuators`/`sensors` are what the device declared (None: not declared yet,
    not checked). `tz` is the broker's local zone for the lamp's daytime window.
    """
    reasons: list[str] = []
    rules: list[Rule] = []
    if not isinstance(thresholds, Mapping):
        raise RuleError(['thresholds must be an object like {"soil_moisture": {"min": 0.3}}'])
    for raw_name, bounds in thresholds.items():
        name = ALIASES.get(raw_name, raw_name)
        if not isinstance(bounds, Mapping) or not bounds:
            reasons.append(f'{raw_name}: expected {{"min": x}} or {{"max": x}}, got {bounds!r}')
            continue
        for bound, value in bounds.items():
            shortcut = SHORTCUTS.get((name, bound))
            if shortcut is None:
                reasons.append(_no_shortcut(raw_name, bound))
                continue
            problem = _value_problem(raw_name, shortcut, value)
            if problem:
                reasons.append(problem)
                continue
            try:
                made = _expand(device_id, shortcut, float(value), tz, hold_s, stale_after_s)
            except RuleError as exc:
                reasons += exc.reasons
                continue
            for rule in made:
                reasons += problems_for_device(rule, sensors, actuators)
            rules += made
    if reasons:
        raise RuleError(list(dict.fromkeys(reasons)))
    return rules


def rules_to_thresholds(rules: Sequence[Rule]) -> dict[str, dict[str, float]]:
    """The `set_thresholds` view back from a device's threshold rules (for GET)."""
    out: dict[str, dict[str, float]] = {}
    for rule in rules:
        parts = rule.id.split(".")
        if rule.id.startswith(THRESHOLD_ID_PREFIX) and len(parts) == 4:
            out.setdefault(parts[2], {})[parts[3]] = rule.threshold
    return out


def _no_shortcut(name: str, bound: str) -> str:
    known = ", ".join(f"{r} {b}" for r, b in SHORTCUTS)
    if bound not in ("min", "max"):
        return f"{name}: unknown bound {bound!r}; use min or max"
    return f"no threshold shortcut for '{name} {bound}' (there are: {known}); add a rule instead"


def _value_problem(name: str, shortcut: Shortcut, value: object) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return f"{name} {shortcut.bound} must be a number, got {value!r}"
    low, high = shortcut.valid
    if not low <= value <= high:
        hint = " (soil moisture is a fraction: 0.30 means 30 %)" if shortcut.valid[1] == 1.0 else ""
        return f"{name} {shortcut.bound} {value:g} is outside {low:g}..{high:g}{hint}"
    return None


def _expand(
    device_id: str,
    s: Shortcut,
    value: float,
    tz: str,
    hold_s: float,
    stale_after_s: float | None,
) -> list[Rule]:
    delta = abs(value) * s.rearm_delta if s.rearm_relative else s.rearm_delta
    low, high = s.valid
    if s.bound == "min":
        op, rearm = Op.LT, min(value + delta, high)
    else:
        op, rearm = Op.GT, max(value - delta, low)
    window = TimeWindow.parse(s.window) if s.window else None
    base = f"{THRESHOLD_ID_PREFIX}{device_id}.{s.reading}.{s.bound}"
    rules = [
        Rule(
            id=base,
            devices=(device_id,),
            reading=s.reading,
            op=op,
            threshold=value,
            action=s.action,
            args=dict(s.args),
            rearm=rearm,
            window=window,
            tz=tz,
            cooldown_s=s.cooldown_s,
            max_fires_per_day=s.max_fires_per_day,
            max_seconds_per_day=s.max_seconds_per_day,
            stale_after_s=stale_after_s,
            hold_s=hold_s,
        )
    ]
    if s.off_action is not None:
        # Off once the reading is back past the re-arm bound; re-armed by the next excursion.
        rules.append(
            Rule(
                id=f"{base}.off",
                devices=(device_id,),
                reading=s.reading,
                op=Op.GT if op is Op.LT else Op.LT,
                threshold=rearm,
                action=s.off_action,
                rearm=value,
                tz=tz,
                stale_after_s=stale_after_s,
                hold_s=hold_s,
            )
        )
    return rules
