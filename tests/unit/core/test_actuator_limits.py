"""Actuator safety limits: short for the pump, long enough for a grow lamp's threshold rule."""

from __future__ import annotations

import pytest

from planty_broker.config import load_settings
from planty_broker.domain.commands import InvalidArgsError, prepare
from planty_broker.domain.rules.thresholds import thresholds_to_rules


def limits() -> tuple[float, dict[str, float]]:
    c = load_settings(env={}).commands
    return c.max_on_seconds, c.max_on_seconds_by_actuator


def test_pump_keeps_the_short_limit_and_gets_it_by_default() -> None:
    default, per = limits()
    assert prepare("pump.on", {}, ("pump",), default, per) == {"seconds": 300}
    with pytest.raises(InvalidArgsError, match="at most 300"):
        prepare("pump.on", {"seconds": 3600}, ("pump",), default, per)


def test_every_threshold_shortcut_command_passes_the_outbox_checks() -> None:
    default, per = limits()
    rules = thresholds_to_rules(
        "dev-1",
        {"temperature": {"max": 30}, "soil_moisture": {"min": 0.3}, "light": {"min": 200}},
        ("pump", "lamp", "fan"),
    )
    assert {r.action for r in rules} >= {"pump.on", "lamp.on", "fan.on"}
    for r in rules:
        prepare(r.action, dict(r.args), ("pump", "lamp", "fan"), default, per)


def test_per_actuator_limits_come_from_config() -> None:
    s = load_settings(env={}, overrides={"commands": {"max_on_seconds_by_actuator": {"lamp": 60}}})
    c = s.commands
    with pytest.raises(InvalidArgsError, match="at most 60"):
        prepare("lamp.on", {"seconds": 61}, ("lamp",), c.max_on_seconds, c.max_on_seconds_by_actuator)
