"""`set_thresholds` expansion: the original design's three thresholds become ordinary rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from planty_broker.domain.rules.clock import TimeWindow
from planty_broker.domain.rules.eval import Outcome
from planty_broker.domain.rules.index import RuleIndex
from planty_broker.domain.rules.model import Op, Rule, RuleError
from planty_broker.domain.rules.thresholds import (
    rules_to_thresholds,
    threshold_rule_prefix,
    thresholds_to_rules,
)

ALL = {"temperature": {"max": 30}, "soil_moisture": {"min": 0.3}, "light": {"min": 200}}
NOON = int(datetime(2025, 6, 1, 12, tzinfo=UTC).timestamp() * 1000)


def by_id(tz: str = "UTC") -> dict[str, Rule]:
    return {r.id: r for r in thresholds_to_rules("dev-1", ALL, ["pump", "lamp", "fan"], tz=tz)}


def test_expansion_with_documented_defaults() -> None:
    rules = by_id(tz="Europe/Paris")
    assert set(rules) == {
        "thr.dev-1.soil_moisture.min",
        "thr.dev-1.light.min",
        "thr.dev-1.temperature.max",
        "thr.dev-1.temperature.max.off",
    }
    pump = rules["thr.dev-1.soil_moisture.min"]
    assert (pump.op, pump.threshold, pump.rearm) == (Op.LT, 0.3, pytest.approx(0.4))
    assert (pump.action, pump.args) == ("pump.on", {"seconds": 20})
    assert (pump.cooldown_s, pump.max_fires_per_day, pump.max_seconds_per_day) == (1800, 5, 120)
    lamp = rules["thr.dev-1.light.min"]
    assert lamp.window == TimeWindow.parse("06:00-20:00")
    assert lamp.tz == "Europe/Paris"
    assert (lamp.action, lamp.rearm) == ("lamp.on", 250)
    fan_on = rules["thr.dev-1.temperature.max"]
    fan_off = rules["thr.dev-1.temperature.max.off"]
    assert (fan_on.op, fan_on.threshold, fan_on.rearm, fan_on.action) == (Op.GT, 30, 28, "fan.on")
    assert (fan_off.op, fan_off.threshold, fan_off.rearm, fan_off.action) == (
        Op.LT,
        28,
        30,
        "fan.off",
    )
    assert all(r.id.startswith(threshold_rule_prefix("dev-1")) for r in rules.values())


def test_water_is_the_original_designs_name_for_soil_moisture() -> None:
    rules = thresholds_to_rules("dev-1", {"water": {"min": 0.25}}, ["pump"])
    assert [(r.reading, r.threshold) for r in rules] == [("soil_moisture", 0.25)]


def test_round_trip_to_the_thresholds_view() -> None:
    rules = thresholds_to_rules("dev-1", ALL, None)
    assert rules_to_thresholds(rules) == {
        "temperature": {"max": 30},
        "soil_moisture": {"min": 0.3},
        "light": {"min": 200},
    }


def test_refusals_name_every_problem() -> None:
    with pytest.raises(RuleError) as info:
        thresholds_to_rules(
            "dev-1",
            {"temperature": {"max": 30}, "soil_moisture": {"min": 30}, "humidity": {"max": 0.8},
             "light": {"avg": 5}, "battery": 3},
            ["pump", "lamp"],
        )  # fmt: skip
    assert info.value.reasons == (
        "actuator 'fan' not declared by device: has pump, lamp",
        "soil_moisture min 30 is outside 0..1 (soil moisture is a fraction: 0.30 means 30 %)",
        "no threshold shortcut for 'humidity max' (there are: soil_moisture min, light min, "
        "temperature max); add a rule instead",
        "light: unknown bound 'avg'; use min or max",
        'battery: expected {"min": x} or {"max": x}, got 3',
    )


def test_sensor_check_when_the_device_declared_them() -> None:
    with pytest.raises(RuleError, match="reading 'light' is not one of the device's sensors"):
        thresholds_to_rules("dev-1", ALL, None, sensors=["temperature", "soil_moisture"])


def test_fan_thermostat_turns_on_hot_and_off_cool_without_toggling() -> None:
    index = RuleIndex()
    index.replace_all(thresholds_to_rules("dev-1", {"temperature": {"max": 30}}, ["fan"]))
    sent = []
    for i, temp in enumerate([25, 31, 30.5, 31, 29, 27.5, 28.5, 27, 31]):
        now = NOON + i * 120_000  # 2 min apart: the last start is past the 10 min cooldown
        for d in index.evaluate("dev-1", {"temperature": temp}, now, now):
            if d.outcome is Outcome.FIRE:
                sent.append((temp, d.action))
    assert sent == [(25, "fan.off"), (31, "fan.on"), (27.5, "fan.off"), (31, "fan.on")]


def test_dry_soil_waters_at_most_five_times_a_day_even_if_it_never_gets_wet() -> None:
    index = RuleIndex()
    index.replace_all(thresholds_to_rules("dev-1", {"soil_moisture": {"min": 0.3}}, ["pump"]))
    fires = 0
    for minute in range(0, 24 * 60, 5):  # a broken pump: soil stays dry, dips to 0.45 now and then
        now = NOON - 12 * 3_600_000 + minute * 60_000
        value = 0.45 if minute % 60 == 0 else 0.2
        fires += sum(d.fired for d in index.evaluate("dev-1", {"soil_moisture": value}, now, now))
    assert fires == 5
