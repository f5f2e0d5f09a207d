"""Rule validation: the 422 reasons a user reads, the JSON shape, time windows and zones."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planty_broker.domain.models import DeviceRecord
from planty_broker.domain.rules.clock import LocalClock, TimeWindow
from planty_broker.domain.rules.model import (
    Rule,
    RuleError,
    parse_rule,
    problems_for_device,
    problems_for_record,
    rule_to_dict,
)

GOOD: dict[str, Any] = {
    "id": "water-1",
    "devices": "dev-1",
    "reading": "soil_moisture",
    "op": "<",
    "threshold": 0.3,
    "rearm": 0.4,
    "action": "pump.on",
    "args": {"seconds": 20},
    "window": "06:00-20:00",
    "tz": "Europe/Paris",
    "cooldown_s": 1800,
    "max_fires_per_day": 5,
    "max_seconds_per_day": 120,
}


def reasons_of(**changes: Any) -> tuple[str, ...]:
    data = {**GOOD, **changes}
    data = {k: v for k, v in data.items() if v is not ...}
    with pytest.raises(RuleError) as info:
        parse_rule(data)
    return info.value.reasons


def test_round_trip_through_json_shape() -> None:
    rule = parse_rule(GOOD)
    assert rule.devices == ("dev-1",)
    assert rule.window == TimeWindow(360, 1200)
    assert parse_rule(rule_to_dict(rule)) == rule
    assert rule_to_dict(rule)["window"] == "06:00-20:00"


def test_star_and_groups() -> None:
    every = parse_rule({**GOOD, "devices": "*"})
    assert every.applies_to("any-device")
    assert rule_to_dict(every)["devices"] == "*"
    group = parse_rule({**GOOD, "devices": ["dev-1", "dev-2"]})
    assert group.applies_to("dev-2")
    assert not group.applies_to("dev-3")
    assert group.is_selector
    assert not parse_rule(GOOD).is_selector


def test_default_tz_comes_from_the_caller() -> None:
    data = {k: v for k, v in GOOD.items() if k != "tz"}
    assert parse_rule(data, default_tz="+02:00").tz == "+02:00"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"rearm": 0.2}, "rearm 0.2 must be >= threshold 0.3 for 'soil_moisture < 0.3'"),
        ({"op": ">", "rearm": 0.5}, "rearm 0.5 must be <= threshold 0.3 for 'soil_moisture > 0.3'"),
        ({"op": "=<"}, "op '=<' must be one of <, <=, >, >="),
        ({"action": "pump.spin"}, "action 'pump.spin': the verb must be one of on, off, set"),
        ({"action": "dance"}, "action 'dance' is not '{actuator}.on|off|set' nor one of ping"),
        ({"action": "lamp.set", "max_seconds_per_day": None}, "needs a number in args.value"),
        ({"args": {}}, "max_seconds_per_day needs args.seconds"),
        ({"args": {"seconds": 200}}, "args.seconds 200 is above max_seconds_per_day 120"),
        ({"args": {"seconds": -1}}, "args.seconds -1 must be a number > 0"),
        ({"window": "6-20"}, "is not HH:MM"),
        ({"window": "06:00-06:00"}, "is empty or the whole day"),
        ({"window": "00:00-24:00"}, "omit the window to act at any time"),
        ({"tz": "Mars/Olympus"}, "time zone 'Mars/Olympus' is neither an offset"),
        ({"tz": "+15:00"}, "out of range"),
        ({"cooldown_s": -5}, "cooldown_s -5 must be a number >= 0"),
        ({"max_fires_per_day": 0}, "max_fires_per_day 0 must be an integer >= 1"),
        ({"stale_after_s": 0}, "stale_after_s 0 must be a number > 0"),
        ({"devices": ["dev-1", "*"]}, "'*' (all devices) cannot be mixed with ids"),
        ({"devices": ["Bad Id"]}, "device id 'Bad Id' is not valid"),
        ({"devices": []}, "devices is empty"),
        ({"threshold": "0.3"}, "threshold '0.3' must be a finite number"),
        ({"threshold": ...}, "missing field 'threshold'"),
        ({"colour": "red"}, "unknown field 'colour'"),
        ({"enabled": "yes"}, "enabled must be true or false"),
    ],
)
def test_each_problem_has_a_clear_reason(changes: dict[str, Any], expected: str) -> None:
    reasons = reasons_of(**changes)
    assert any(expected in r for r in reasons), reasons


def test_all_problems_are_reported_at_once() -> None:
    reasons = reasons_of(op="=<", rearm=0.2, window="25:00-03:00", cooldown_s=-1, id=...)
    assert len(reasons) == 4, reasons  # op, missing id, window, cooldown (rearm vs op unknowable)
    assert "; " in str(RuleError(reasons))


def test_rule_constructor_refuses_too() -> None:
    with pytest.raises(RuleError, match=r"rearm 0\.1 must be >= threshold 0\.3"):
        Rule("r", ("dev-1",), "soil_moisture", "<", 0.3, "pump.on", rearm=0.1)  # type: ignore[arg-type]


def test_device_check_names_the_typo_and_what_exists() -> None:
    rule = parse_rule({**GOOD, "reading": "sol_moisture", "action": "fan.on", "args": {},
                       "max_seconds_per_day": None})  # fmt: skip
    assert problems_for_device(
        rule, ["temperature", "soil_moisture", "light"], ["pump", "lamp"]
    ) == [
        "reading 'sol_moisture' is not one of the device's sensors: temperature, soil_moisture, "
        "light (did you mean 'soil_moisture'?)",
        "actuator 'fan' not declared by device: has pump, lamp",
    ]


def test_device_check_passes_good_rule_and_builtin_actions() -> None:
    assert problems_for_device(parse_rule(GOOD), ["soil_moisture"], ["pump"]) == []
    ping = parse_rule({**GOOD, "action": "read", "args": {}, "max_seconds_per_day": None})
    assert problems_for_device(ping, ["soil_moisture"], []) == []


def test_record_never_declared_is_not_checked_but_declared_one_is() -> None:
    rule = parse_rule(GOOD)
    fresh = DeviceRecord(id="dev-1", created_at_ms=0, token_hash="h")
    assert problems_for_record(rule, fresh) == []
    sensor_only = DeviceRecord(
        id="dev-1", created_at_ms=0, token_hash="h", sensors=("soil_moisture",)
    )
    assert problems_for_record(rule, sensor_only) == [
        "device 'dev-1': actuator 'pump' not declared by device: has none"
    ]


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [("06:00-20:00", 360, 1200), ("22:30-06:15", 1350, 375), ("20:00-24:00", 1200, 1440)],
)
def test_window_parse(text: str, start: int, end: int) -> None:
    window = TimeWindow.parse(text)
    assert (window.start_min, window.end_min) == (start, end)
    assert str(window) == text


def test_window_to_midnight_includes_the_last_minute() -> None:
    window = TimeWindow.parse("20:00-24:00")
    assert window.contains(1439)
    assert not window.contains(0)


@pytest.mark.parametrize(
    ("tz", "offset_h"), [("UTC", 0), ("+05:30", 5.5), ("-0800", -8), ("UTC+01:00", 1)]
)
def test_fixed_offsets(tz: str, offset_h: float) -> None:
    clock = LocalClock(tz)
    day, minute = clock.local(0)
    assert minute == int(offset_h * 60) % 1440
    assert day == (-1 if offset_h < 0 else 0)


def test_named_zone_offset_changes_with_dst() -> None:
    clock = LocalClock("Europe/Paris")
    assert clock.offset_ms(1_736_942_400_000) == 3_600_000  # 2025-01-15
    assert clock.offset_ms(1_752_580_800_000) == 7_200_000  # 2025-07-15


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*GOOD, "enabled", "hold_s", "stale_after_s", "bogus"]), json_values
    ),
    st.booleans(),
)
def test_any_json_object_gives_a_rule_or_clear_reasons(junk: dict[str, Any], base: bool) -> None:
    data = {**GOOD, **junk} if base else junk
    try:
        rule = parse_rule(data)
    except RuleError as exc:
        reasons = exc.reasons
    else:
        assert parse_rule(rule_to_dict(rule)) == rule
        return
    assert reasons
    assert all(isinstance(r, str) and r for r in reasons)
