"""Example tests of the evaluator: what a user sees in the history for common situations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from planty_broker.domain.rules.clock import TimeWindow
from planty_broker.domain.rules.eval import (
    Outcome,
    Reason,
    RuleState,
    check_silence,
    evaluate,
    note_manual_command,
    record_fire,
)
from planty_broker.domain.rules.model import Op, Rule

MIN = 60_000
HOUR = 3_600_000


def at(text: str, tz: str = "UTC") -> int:
    """Unix ms of a local wall-clock time, e.g. at("2025-06-01 23:30", "Europe/Paris")."""
    zone = UTC if tz == "UTC" else ZoneInfo(tz)
    return int(datetime.fromisoformat(text).replace(tzinfo=zone).timestamp() * 1000)


def pump_rule(**kw: Any) -> Rule:
    base: dict[str, Any] = {
        "id": "water",
        "devices": ("dev-1",),
        "reading": "soil_moisture",
        "op": Op.LT,
        "threshold": 0.30,
        "action": "pump.on",
        "args": {"seconds": 20},
        "rearm": 0.40,
        "stale_after_s": None,
    }
    base.update(kw)
    return Rule(**base)


def feed(
    rule: Rule, state: RuleState, values: list[float], t0: int, step_ms: int = MIN
) -> list[Any]:
    return [
        evaluate(rule, state, v, t0 + i * step_ms, t0 + i * step_ms) for i, v in enumerate(values)
    ]


def test_dry_soil_fires_pump_once_and_noise_does_not_toggle_it() -> None:
    rule, state = pump_rule(), RuleState("dev-1")
    out = feed(rule, state, [0.35, 0.29, 0.31, 0.29, 0.32, 0.28], at("2025-06-01 10:00"))
    assert out[0] is None
    assert out[1].outcome is Outcome.FIRE
    assert (out[1].action, out[1].args) == ("pump.on", {"seconds": 20})
    assert out[1].detail.startswith("soil_moisture 0.29 < 0.3")
    assert [d.reason if d else None for d in out[2:]] == [
        None,
        Reason.DISARMED,
        None,
        Reason.DISARMED,
    ]
    assert not any(d.event for d in out[2:] if d)


def test_rearms_only_after_passing_the_rearm_bound() -> None:
    rule, state = pump_rule(), RuleState("dev-1")
    out = feed(rule, state, [0.2, 0.39, 0.2, 0.40, 0.2], at("2025-06-01 10:00"))
    assert [d.outcome if d else None for d in out] == [
        Outcome.FIRE, None, Outcome.SUPPRESSED, None, Outcome.FIRE,
    ]  # fmt: skip


def test_default_rearm_is_the_threshold() -> None:
    rule, state = pump_rule(rearm=None), RuleState("dev-1")
    out = feed(rule, state, [0.2, 0.30, 0.2], at("2025-06-01 10:00"))
    assert [d.outcome if d else None for d in out] == [Outcome.FIRE, None, Outcome.FIRE]


def test_cooldown_suppresses_then_allows_a_refire() -> None:
    rule, state = pump_rule(rearm=None, cooldown_s=1800), RuleState("dev-1")
    t0 = at("2025-06-01 10:00")
    assert evaluate(rule, state, 0.2, t0, t0).fired
    assert evaluate(rule, state, 0.5, t0 + MIN, t0 + MIN) is None  # re-armed
    d = evaluate(rule, state, 0.2, t0 + 5 * MIN, t0 + 5 * MIN)
    assert d is not None
    assert (d.reason, d.event) == (Reason.COOLDOWN, True)
    assert "fired 5m ago (cooldown 30m)" in d.detail
    again = evaluate(rule, state, 0.2, t0 + 6 * MIN, t0 + 6 * MIN)
    assert again is not None
    assert (again.reason, again.event, again.repeat) == (Reason.COOLDOWN, False, 2)
    assert evaluate(rule, state, 0.2, t0 + 30 * MIN, t0 + 30 * MIN).fired  # type: ignore[union-attr]


def test_daily_fire_budget_resets_at_local_midnight() -> None:
    tz = "Europe/Paris"
    rule, state = pump_rule(rearm=None, max_fires_per_day=2, tz=tz), RuleState("dev-1")
    t = at("2025-06-01 23:00", tz)
    results = []
    for i in range(6):  # dry every 10 minutes, 23:00 .. 23:50
        results.append(evaluate(rule, state, 0.2, t + i * 10 * MIN, t + i * 10 * MIN))
        evaluate(rule, state, 0.5, t + i * 10 * MIN + 1, t + i * 10 * MIN + 1)  # re-arm
    assert [d.outcome for d in results].count(Outcome.FIRE) == 2
    assert results[2].reason is Reason.BUDGET
    assert "fire 2 of 2 today" in results[2].detail
    midnight = at("2025-06-02 00:00", tz)  # 22:00 UTC: the budget day is the local day
    assert evaluate(rule, state, 0.2, midnight, midnight).fired  # type: ignore[union-attr]


def test_daily_seconds_budget_counts_args_seconds() -> None:
    rule = pump_rule(rearm=None, args={"seconds": 50}, max_seconds_per_day=120)
    state = RuleState("dev-1")
    t0 = at("2025-06-01 08:00")
    fired = 0
    for i in range(5):
        d = evaluate(rule, state, 0.2, t0 + i * HOUR, t0 + i * HOUR)
        evaluate(rule, state, 0.5, t0 + i * HOUR + 1, t0 + i * HOUR + 1)
        fired += bool(d and d.fired)
    assert fired == 2  # 50 + 50 = 100; a third would make 150 > 120
    assert state.seconds_today == 100


@pytest.mark.parametrize(
    ("age_ms", "text"), [(20 * MIN, "20m old"), (-3 * HOUR, "dated 3h00m in the future")]
)
def test_stale_reading_never_fires(age_ms: int, text: str) -> None:
    rule, state = pump_rule(stale_after_s=900), RuleState("dev-1")
    now = at("2025-06-01 10:00")
    d = evaluate(rule, state, 0.1, now - age_ms, now)
    assert d is not None
    assert (d.outcome, d.reason, d.event) == (Outcome.SUPPRESSED, Reason.STALE, True)
    assert text in d.detail
    assert state.armed  # the fresh reading after it still fires
    assert evaluate(rule, state, 0.1, now + 1, now + 1).fired  # type: ignore[union-attr]


def test_stale_reading_does_not_rearm() -> None:
    rule, state = pump_rule(stale_after_s=900), RuleState("dev-1")
    now = at("2025-06-01 10:00")
    assert evaluate(rule, state, 0.1, now, now).fired  # type: ignore[union-attr]
    assert evaluate(rule, state, 0.9, now - HOUR, now + MIN) is None  # old reading of wet soil
    d = evaluate(rule, state, 0.1, now + 2 * MIN, now + 2 * MIN)
    assert d is not None
    assert d.reason is Reason.DISARMED


def test_manual_command_holds_the_rule_for_hold_s() -> None:
    rule, state = pump_rule(hold_s=1800), RuleState("dev-1")
    now = at("2025-06-01 10:00")
    note_manual_command(state, now, rule.hold_s)
    d = evaluate(rule, state, 0.1, now + 10 * MIN, now + 10 * MIN)
    assert d is not None
    assert (d.reason, d.event) == (Reason.OVERRIDE, True)
    assert "manual pump command holds rules for another 20m" in d.detail
    assert evaluate(rule, state, 0.1, now + 30 * MIN, now + 30 * MIN).fired  # type: ignore[union-attr]


def test_a_shorter_later_hold_does_not_cut_a_longer_one() -> None:
    state = RuleState("dev-1")
    note_manual_command(state, 0, 3600)
    note_manual_command(state, 1000, 10)
    assert state.manual_hold_until_ms == 3_600_000


@pytest.mark.parametrize(
    ("local", "inside"),
    [("21:59", False), ("22:00", True), ("23:59", True), ("00:00", True), ("05:59", True),
     ("06:00", False), ("12:00", False)],
)  # fmt: skip
def test_window_across_midnight(local: str, inside: bool) -> None:
    rule = pump_rule(window=TimeWindow.parse("22:00-06:00"), tz="+02:00")
    state = RuleState("dev-1")
    now = at(f"2025-06-01 {local}") - 2 * HOUR  # local wall clock in +02:00
    d = evaluate(rule, state, 0.1, now, now)
    assert d is not None
    assert d.fired is inside
    if not inside:
        assert d.reason is Reason.OUTSIDE_WINDOW
        assert f"local time {local} is outside 22:00-06:00 (+02:00)" in d.detail


def test_window_follows_daylight_saving_time() -> None:
    rule = pump_rule(window=TimeWindow.parse("06:00-20:00"), tz="Europe/Paris")
    for day in ("2025-01-15", "2025-07-15"):  # UTC+1 in winter, UTC+2 in summer
        state = RuleState("dev-1")
        early = at(f"{day} 05:59", "Europe/Paris")
        d = evaluate(rule, state, 0.1, early, early)
        assert d is not None
        assert d.reason is Reason.OUTSIDE_WINDOW
        opens = at(f"{day} 06:00", "Europe/Paris")
        assert evaluate(rule, state, 0.1, opens, opens).fired  # type: ignore[union-attr]


def test_one_event_per_suppression_run_and_a_new_run_after_rearm() -> None:
    rule = pump_rule(window=TimeWindow.parse("06:00-20:00"))
    state = RuleState("dev-1")
    night = at("2025-06-01 21:00")
    out = feed(rule, state, [0.1] * 5, night, 10 * MIN)
    assert [d.event for d in out] == [True, False, False, False, False]
    assert out[-1].repeat == 5
    evaluate(rule, state, 0.5, night + HOUR, night + HOUR)  # passes the re-arm bound
    d = evaluate(rule, state, 0.1, night + 2 * HOUR, night + 2 * HOUR)
    assert d is not None
    assert d.event
    morning = at("2025-06-02 06:05")
    assert evaluate(rule, state, 0.1, morning, morning).fired  # type: ignore[union-attr]


def test_guard_order_stale_before_override_before_window() -> None:
    rule = pump_rule(window=TimeWindow.parse("06:00-07:00"), stale_after_s=60)
    state = RuleState("dev-1")
    now = at("2025-06-01 12:00")
    note_manual_command(state, now, 600)
    assert evaluate(rule, state, 0.1, now - HOUR, now).reason is Reason.STALE  # type: ignore[union-attr]
    assert evaluate(rule, state, 0.1, now, now).reason is Reason.OVERRIDE  # type: ignore[union-attr]
    later = now + HOUR
    assert evaluate(rule, state, 0.1, later, later).reason is Reason.OUTSIDE_WINDOW  # type: ignore[union-attr]


def test_disabled_rule_and_nan_do_nothing() -> None:
    now = at("2025-06-01 12:00")
    assert evaluate(pump_rule(enabled=False), RuleState("dev-1"), 0.1, now, now) is None
    assert evaluate(pump_rule(), RuleState("dev-1"), float("nan"), now, now) is None


def test_greater_than_rule_with_rearm_below() -> None:
    rule = Rule("hot", ("dev-1",), "temperature", Op.GT, 30.0, "fan.on", rearm=28.0)
    state = RuleState("dev-1")
    out = feed(rule, state, [31, 29, 31, 28, 31], at("2025-06-01 12:00"))
    assert [d.outcome if d else None for d in out] == [
        Outcome.FIRE, None, Outcome.SUPPRESSED, None, Outcome.FIRE,
    ]  # fmt: skip


def test_silent_sensor_warns_once_per_silence() -> None:
    rule, state = pump_rule(stale_after_s=900), RuleState("dev-1")
    now = at("2025-06-01 12:00")
    evaluate(rule, state, 0.5, now, now)
    assert check_silence(rule, state, now + 10 * MIN) is None
    warning = check_silence(rule, state, now + 16 * MIN)
    assert warning is not None
    assert (warning.outcome, warning.reason) == (Outcome.WARNING, Reason.SENSOR_SILENT)
    assert warning.detail.startswith("no soil_moisture reading for 16m (limit 15m)")
    assert check_silence(rule, state, now + 30 * MIN) is None  # already warned
    evaluate(rule, state, 0.5, now + 40 * MIN, now + 40 * MIN)
    assert check_silence(rule, state, now + 60 * MIN) is not None  # silent again


def test_silence_clock_starts_at_first_check_when_never_seen() -> None:
    rule, state = pump_rule(stale_after_s=900), RuleState("dev-1")
    now = at("2025-06-01 12:00")
    assert check_silence(rule, state, now) is None
    assert check_silence(rule, state, now + 16 * MIN) is not None


def test_record_fire_replays_history_into_budget_and_cooldown() -> None:
    rule = pump_rule(rearm=None, max_fires_per_day=1, cooldown_s=600)
    state = RuleState("dev-1")
    t = at("2025-06-01 09:00")
    record_fire(rule, state, t)
    d = evaluate(rule, state, 0.5, t + HOUR, t + HOUR)
    assert d is None
    d = evaluate(rule, state, 0.1, t + 2 * HOUR, t + 2 * HOUR)
    assert d is not None
    assert d.reason is Reason.BUDGET


def test_decision_to_event_is_plain_json() -> None:
    now = at("2025-06-01 12:00")
    d = evaluate(pump_rule(), RuleState("dev-1"), 0.1, now - 5000, now)
    assert d is not None
    assert d.to_event() == {
        "rule_id": "water",
        "device_id": "dev-1",
        "outcome": "fire",
        "reason": None,
        "reading": "soil_moisture",
        "value": 0.1,
        "reading_ts_ms": now - 5000,
        "at_ms": now,
        "action": "pump.on",
        "args": {"seconds": 20},
        "detail": "soil_moisture 0.1 < 0.3",
    }


def test_hold_ends_exactly_hold_s_after_the_manual_command() -> None:
    rule, state = pump_rule(hold_s=600), RuleState("dev-1")
    now = at("2025-06-01 10:00")
    note_manual_command(state, now, rule.hold_s)
    last_held = now + 600_000 - 1
    d = evaluate(rule, state, 0.1, last_held, last_held)
    assert d is not None
    assert d.reason is Reason.OVERRIDE
    assert evaluate(rule, state, 0.1, now + 600_000, now + 600_000).fired  # type: ignore[union-attr]


def test_cooldown_ends_exactly_cooldown_s_after_the_fire() -> None:
    rule, state = pump_rule(rearm=None, cooldown_s=600), RuleState("dev-1")
    now = at("2025-06-01 10:00")
    assert evaluate(rule, state, 0.1, now, now).fired  # type: ignore[union-attr]
    evaluate(rule, state, 0.5, now + 1, now + 1)
    d = evaluate(rule, state, 0.1, now + 600_000 - 1, now + 600_000 - 1)
    assert d is not None
    assert d.reason is Reason.COOLDOWN
    assert evaluate(rule, state, 0.1, now + 600_000, now + 600_000).fired  # type: ignore[union-attr]
