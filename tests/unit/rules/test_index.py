"""RuleIndex: the live rule set the rules service evaluates telemetry against."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from planty_broker.domain.rules.eval import Outcome, Reason
from planty_broker.domain.rules.index import RuleIndex
from planty_broker.domain.rules.model import ALL_DEVICES, Op, Rule

NOON = int(datetime(2025, 6, 1, 12, tzinfo=UTC).timestamp() * 1000)
MIN = 60_000


def rule(rule_id: str = "water", devices: tuple[str, ...] = ("dev-1",), **kw: Any) -> Rule:
    base: dict[str, Any] = {
        "reading": "soil_moisture",
        "op": Op.LT,
        "threshold": 0.3,
        "action": "pump.on",
        "args": {"seconds": 20},
        "rearm": 0.4,
    }
    base.update(kw)
    return Rule(rule_id, devices, **base)


def fired(index: RuleIndex, device_id: str, values: dict[str, float], now: int) -> list[str]:
    return [d.action for d in index.evaluate(device_id, values, now, now) if d.fired]


def test_only_the_rules_device_and_reading_match() -> None:
    index = RuleIndex()
    index.put(rule())
    assert index.lookup("dev-2", "soil_moisture") == []
    assert index.lookup("dev-1", "light") == []
    assert [r.id for r, _ in index.lookup("dev-1", "soil_moisture")] == ["water"]
    assert fired(index, "dev-2", {"soil_moisture": 0.1}, NOON) == []
    assert fired(index, "dev-1", {"soil_moisture": 0.1, "light": 5}, NOON) == ["pump.on"]


def test_empty_index_returns_nothing() -> None:
    index = RuleIndex()
    assert list(index.evaluate("dev-1", {"soil_moisture": 0.1}, NOON, NOON)) == []
    assert len(index) == 0


def test_changing_a_threshold_takes_effect_on_the_next_reading_and_keeps_budget() -> None:
    index = RuleIndex()
    index.put(rule(max_fires_per_day=1))
    assert fired(index, "dev-1", {"soil_moisture": 0.35}, NOON) == []
    index.put(rule(threshold=0.4, rearm=0.5, max_fires_per_day=2))
    assert fired(index, "dev-1", {"soil_moisture": 0.35}, NOON + MIN) == ["pump.on"]
    state = index.state("water", "dev-1")
    assert state is not None
    assert state.fires_today == 1
    index.put(rule(threshold=0.4, rearm=0.5, max_fires_per_day=1))  # tighter budget, same day
    index.evaluate("dev-1", {"soil_moisture": 0.6}, NOON + 2 * MIN, NOON + 2 * MIN)
    out = index.evaluate("dev-1", {"soil_moisture": 0.35}, NOON + 3 * MIN, NOON + 3 * MIN)
    assert [d.reason for d in out] == [Reason.BUDGET]


def test_disable_and_remove() -> None:
    index = RuleIndex()
    index.put(rule())
    index.put(replace(rule(), enabled=False))
    assert index.lookup("dev-1", "soil_moisture") == []
    index.put(rule())
    assert index.remove("water") is not None
    assert index.remove("water") is None
    assert fired(index, "dev-1", {"soil_moisture": 0.1}, NOON) == []
    assert index.state("water", "dev-1") is None


def test_star_rule_applies_to_every_device_with_its_own_state() -> None:
    index = RuleIndex()
    index.put(rule(devices=(ALL_DEVICES,)))
    assert fired(index, "dev-1", {"soil_moisture": 0.1}, NOON) == ["pump.on"]
    assert fired(index, "dev-2", {"soil_moisture": 0.1}, NOON) == ["pump.on"]
    assert fired(index, "dev-1", {"soil_moisture": 0.1}, NOON + MIN) == []  # dev-1 is disarmed
    assert set(index.states("water")) == {"dev-1", "dev-2"}


def test_selector_rules_skip_devices_known_to_lack_the_actuator() -> None:
    declared = {"dev-1": ["pump"], "dev-2": ["lamp"]}
    index = RuleIndex(actuators_of=declared.get)
    index.put(rule(devices=(ALL_DEVICES,)))
    index.put(rule("group", devices=("dev-1", "dev-2")))
    assert fired(index, "dev-1", {"soil_moisture": 0.1}, NOON) == ["pump.on", "pump.on"]
    assert fired(index, "dev-2", {"soil_moisture": 0.1}, NOON) == []
    assert fired(index, "dev-3", {"soil_moisture": 0.1}, NOON) == ["pump.on"]  # unknown: try
    declared["dev-2"] = ["lamp", "pump"]
    index.invalidate_device("dev-2")
    assert fired(index, "dev-2", {"soil_moisture": 0.1}, NOON + MIN) == ["pump.on", "pump.on"]


def test_group_rule_shrinking_drops_the_old_members() -> None:
    index = RuleIndex()
    index.put(rule(devices=("dev-1", "dev-2")))
    index.put(rule(devices=("dev-2",)))
    assert fired(index, "dev-1", {"soil_moisture": 0.1}, NOON) == []
    assert set(index.states("water")) == {"dev-2"}


def test_manual_command_holds_only_rules_on_that_actuator() -> None:
    index = RuleIndex()
    index.put(rule(hold_s=600))
    index.put(rule("lamp", reading="light", threshold=200, rearm=None, action="lamp.on", args={}))
    assert index.note_manual_command("dev-1", "pump.off", NOON) == ["water"]
    assert index.note_manual_command("dev-1", "ping", NOON) == []
    out = index.evaluate("dev-1", {"soil_moisture": 0.1, "light": 5}, NOON + MIN, NOON + MIN)
    assert [(d.rule_id, d.outcome, d.reason) for d in out] == [
        ("water", Outcome.SUPPRESSED, Reason.OVERRIDE),
        ("lamp", Outcome.FIRE, None),
    ]
    assert fired(index, "dev-1", {"soil_moisture": 0.1}, NOON + 10 * MIN) == ["pump.on"]


def test_silent_sensors_warn_per_rule_and_device() -> None:
    index = RuleIndex()
    index.put(rule(stale_after_s=600))
    assert index.silent_sensors(NOON) == []  # starts the silence clock of a never-heard device
    warnings = index.silent_sensors(NOON + 11 * MIN)
    assert [(w.rule_id, w.device_id, w.reason) for w in warnings] == [
        ("water", "dev-1", Reason.SENSOR_SILENT)
    ]
    assert index.silent_sensors(NOON + 12 * MIN) == []


def test_restore_fire_replays_budget_after_restart() -> None:
    index = RuleIndex()
    index.put(rule(max_fires_per_day=1, rearm=None))
    index.restore_fire("water", "dev-1", NOON - 3_600_000)
    assert list(index.evaluate("dev-1", {"soil_moisture": 0.1}, NOON, NOON)) == []  # disarmed
    state = index.state("water", "dev-1")
    assert state is not None
    assert not state.armed
    index.evaluate("dev-1", {"soil_moisture": 0.5}, NOON + 1, NOON + 1)
    out = index.evaluate("dev-1", {"soil_moisture": 0.1}, NOON + 2, NOON + 2)
    assert [d.reason for d in out] == [Reason.BUDGET]


def test_replace_all_keeps_states_of_kept_rules_and_drops_the_rest() -> None:
    index = RuleIndex()
    index.replace_all([rule(), rule("other", reading="light", threshold=5, rearm=None)])
    index.evaluate("dev-1", {"soil_moisture": 0.1}, NOON, NOON)
    index.replace_all([rule()])
    assert [r.id for r in index.rules()] == ["water"]
    state = index.state("water", "dev-1")
    assert state is not None
    assert state.fires_today == 1


def test_restore_fire_on_a_running_index_rearms_from_the_next_reading() -> None:
    index = RuleIndex()
    index.put(rule(max_fires_per_day=1, rearm=None))
    index.evaluate("dev-1", {"soil_moisture": 0.5}, NOON, NOON)  # the device's map is built
    index.restore_fire("water", "dev-1", NOON)
    index.evaluate("dev-1", {"soil_moisture": 0.5}, NOON + 1, NOON + 1)  # re-arms
    out = index.evaluate("dev-1", {"soil_moisture": 0.1}, NOON + 2, NOON + 2)
    assert [d.reason for d in out] == [Reason.BUDGET]


def test_forget_device_drops_its_state() -> None:
    index = RuleIndex()
    index.put(rule(devices=(ALL_DEVICES,)))
    index.evaluate("dev-1", {"soil_moisture": 0.1}, NOON, NOON)
    index.forget_device("dev-1")
    assert index.state("water", "dev-1") is None
    assert fired(index, "dev-1", {"soil_moisture": 0.1}, NOON + MIN) == ["pump.on"]
