"""The device-side command rules of PROTOCOL.md, checked without any network."""

from __future__ import annotations

import random

import pytest

from planty_broker.protocol import Command
from planty_broker.simulator.firmware import Firmware, Source
from planty_broker.simulator.plant import PlantModel


class Clock:
    def __init__(self, t: float = 1_764_240_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fw(clock: Clock) -> Firmware:
    plant = PlantModel(rng=random.Random(1))
    return Firmware(
        ("temperature", "soil_moisture", "light"), ("pump", "lamp"), 60.0, clock, 4, plant
    )


def test_duplicate_gets_the_first_ack_and_runs_nothing(fw: Firmware) -> None:
    first = fw.handle(Command("c1", "lamp.set", {"value": 0.3}))
    again = fw.handle(Command("c1", "lamp.off"))
    assert again.duplicate
    assert again.ack == first.ack
    assert fw.actuator("lamp").value == 0.3
    assert [e.command_id for e in fw.log] == ["c1"]


def test_dedup_memory_is_bounded_and_forgets_the_oldest(fw: Firmware) -> None:
    for n in range(5):
        fw.handle(Command(f"c{n}", "ping"))
    assert not fw.handle(Command("c0", "ping")).duplicate  # forgotten: memory holds 4
    assert fw.handle(Command("c4", "ping")).duplicate


def test_a_dedup_hit_beats_the_deadline(fw: Firmware, clock: Clock) -> None:
    deadline = int(clock.t * 1000) + 1000
    first = fw.handle(Command("c1", "pump.on", exp=deadline))
    clock.t += 5  # the broker re-sends after the deadline: the first result still stands
    again = fw.handle(Command("c1", "pump.on", exp=deadline))
    assert again.duplicate
    assert again.ack.ok
    assert again.ack == first.ack


def test_expired_refused_and_nothing_changes(fw: Firmware, clock: Clock) -> None:
    out = fw.handle(Command("c1", "pump.on", exp=int(clock.t * 1000) - 1))
    assert out.expired
    assert out.ack.error == "expired"
    assert not out.ack.ok
    assert not fw.actuator("pump").on
    assert fw.log == []


def test_on_with_seconds_turns_itself_off_when_due(fw: Firmware, clock: Clock) -> None:
    out = fw.handle(Command("c1", "pump.on", {"seconds": 10}))
    assert out.auto_off_at == clock.t + 10
    clock.t += 9.9
    assert fw.expire_due() == []
    assert fw.actuator("pump").on
    clock.t += 0.1
    assert fw.expire_due() == ["pump"]
    assert not fw.actuator("pump").on
    assert [(e.action, e.source) for e in fw.log] == [
        ("pump.on", Source.COMMAND),
        ("pump.off", Source.AUTO),
    ]


def test_a_new_on_extends_the_run_and_off_cancels_it(fw: Firmware, clock: Clock) -> None:
    fw.handle(Command("c1", "pump.on", {"seconds": 5}))
    clock.t += 3
    fw.handle(Command("c2", "pump.on", {"seconds": 5}))
    clock.t += 3  # the first deadline passed, the second not
    assert fw.expire_due() == []
    fw.handle(Command("c3", "pump.off"))
    clock.t += 10
    assert fw.expire_due() == []  # nothing left to switch off
    assert [e.action for e in fw.log] == ["pump.on", "pump.on", "pump.off"]


@pytest.mark.parametrize(
    ("action", "args", "error_part"),
    [
        ("fan.on", {}, "unknown action 'fan.on'"),
        ("pump.spin", {}, "unknown action 'pump.spin'"),
        ("reboot", {}, "unknown action 'reboot'"),
        ("pump.on", {"seconds": -1}, "seconds must be a positive number"),
        ("pump.on", {"seconds": True}, "seconds must be a positive number"),
        ("lamp.set", {}, "value must be a number from 0 to 1"),
        ("lamp.set", {"value": 1.5}, "value must be a number from 0 to 1"),
        ("config", {"interval_s": 0}, "interval_s must be a positive number"),
        ("config", {"colour": "red"}, "unknown key(s) colour"),
        ("config", {}, "nothing to change"),
    ],
)
def test_refusals_say_why(
    fw: Firmware, action: str, args: dict[str, object], error_part: str
) -> None:
    out = fw.handle(Command("c1", action, args))
    assert not out.ack.ok
    assert error_part in (out.ack.error or "")
    assert fw.log == []
    assert fw.actuator("pump") == fw.actuator("pump").__class__("pump")


def test_builtins(fw: Firmware) -> None:
    assert fw.handle(Command("p", "ping")).ack.result is None
    readings = (fw.handle(Command("r", "read")).ack.result or {})["readings"]
    assert set(readings) == {"temperature", "soil_moisture", "light"}
    out = fw.handle(Command("c", "config", {"interval_s": 15}))
    assert out.interval_changed
    assert out.ack.result == {"interval_s": 15}
    assert fw.interval_s == 15.0


def test_power_cycle_switches_everything_off_but_keeps_dedup(fw: Firmware) -> None:
    fw.handle(Command("c1", "lamp.on"))
    fw.power_cycle()
    assert not fw.actuator("lamp").on
    assert fw.handle(Command("c1", "lamp.on")).duplicate  # a re-send after a reboot runs nothing
    assert not fw.actuator("lamp").on


def test_plant_dries_without_water_and_wets_with_the_pump(clock: Clock) -> None:
    plant = PlantModel(rng=random.Random(3), soil_moisture=0.5)
    plant.advance(clock.t, {})
    plant.advance(clock.t + 3600, {})
    dried = plant.soil_moisture
    assert 0.45 < dried < 0.5
    plant.advance(clock.t + 3610, {"pump": 1.0})
    assert plant.soil_moisture > dried + 0.02
    assert plant.soil_moisture <= 1.0


def test_lamp_adds_light(clock: Clock) -> None:
    dark = PlantModel(rng=random.Random(3)).readings(clock.t, {}, ("light",))["light"]
    lit = PlantModel(rng=random.Random(3)).readings(clock.t, {"lamp": 1.0}, ("light",))["light"]
    assert lit > dark + 2000


def test_varied_pots_differ_like_real_ones() -> None:
    pots = [PlantModel.varied(random.Random(seed)) for seed in range(20)]
    start = [p.soil_moisture for p in pots]
    assert len(set(start)) == 20 and max(start) - min(start) > 0.2
    for p in pots:
        p.advance(0.0, {})
        p.advance(3600.0, {})
    dried = [s - p.soil_moisture for s, p in zip(start, pots, strict=True)]
    assert max(dried) > 1.5 * min(dried)  # some dry faster than others
    temps = [p.readings(3600.0, {}, ("temperature",))["temperature"] for p in pots]
    assert max(temps) - min(temps) > 1.0
