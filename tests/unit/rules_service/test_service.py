"""The rules service on the memory store with the real outbox: fires, holds, history, checks."""

from __future__ import annotations

import pytest

from planty_broker.domain.rules.model import RuleError
from planty_broker.services.registry import UnknownDeviceError
from planty_broker.services.rules.service import RuleExistsError
from tests.unit.rules_service.harness import SOIL_RULE, rules_harness

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_dry_soil_sends_pump_on_through_the_outbox_and_the_history_says_why() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        await r.rules.upsert_rule(SOIL_RULE)
        r.reading("dev-1", soil_moisture=0.35)
        assert await r.rule_commands("dev-1") == []
        r.reading("dev-1", soil_moisture=0.27)
        [cmd] = await r.rule_commands("dev-1")
        assert (cmd.action, cmd.args, cmd.origin) == ("pump.on", {"seconds": 20}, "rule")
        assert cmd.exp_ms - cmd.created_ms == 60_000  # rules.command_ttl_s: never sent late
        [sent] = await r.h.link.wait_sent(1, action="pump.on")
        assert sent.id == cmd.id
        lines = await r.history("water")
        assert [line.outcome for line in lines] == ["changed", "fire"]
        fire = lines[-1].data
        assert fire["value"] == 0.27 and fire["reading"] == "soil_moisture"
        assert fire["command_id"] == cmd.id and "error" not in fire
        assert fire["detail"].startswith("soil_moisture 0.27 < 0.3 (fire 1 of 3 today")
        logged = await r.store.read_events(0, 1000, ["rule"])
        assert [e.data["outcome"] for e in logged] == ["changed", "fire"]
        assert logged[-1].device_id == "dev-1"


async def test_noisy_readings_around_the_threshold_water_once_until_the_soil_recovers() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        await r.rules.upsert_rule({**SOIL_RULE, "cooldown_s": 0})
        for v in (0.29, 0.31, 0.29, 0.33, 0.28, 0.39, 0.29):
            r.reading("dev-1", soil_moisture=v)
        assert len(await r.rule_commands("dev-1")) == 1
        r.reading("dev-1", soil_moisture=0.41)  # past the re-arm bound
        r.reading("dev-1", soil_moisture=0.29)
        assert len(await r.rule_commands("dev-1")) == 2
        outcomes = [line.outcome for line in await r.history("water")]
        assert outcomes == ["changed", "fire", "fire"]  # `disarmed` is never a history line


async def test_a_manual_pump_off_holds_the_rule_and_the_history_shows_it() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        await r.rules.upsert_rule({**SOIL_RULE, "hold_s": 300})
        manual = await r.h.service.submit("dev-1", "pump.off", origin="api")
        r.reading("dev-1", soil_moisture=0.2)
        assert await r.rule_commands("dev-1") == []
        lines = await r.history("water")
        assert [(x.outcome, x.data["reason"]) for x in lines] == [
            ("changed", "created"),
            ("hold", "manual"),
            ("suppressed", "override"),
        ]
        assert lines[1].data["command_id"] == manual.id
        assert "manual pump.off (api" in lines[1].data["detail"]
        assert "holds rules for another 5m" in lines[2].data["detail"]
        r.clock.advance(301)  # the hold runs out: the next dry reading waters
        r.reading("dev-1", soil_moisture=0.2)
        assert len(await r.rule_commands("dev-1")) == 1


async def test_firestore_commands_hold_too_but_the_rules_own_commands_never_do() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        await r.rules.upsert_rule({**SOIL_RULE, "cooldown_s": 0})
        await r.rules.upsert_rule(
            {**SOIL_RULE, "id": "water-2", "threshold": 0.25, "rearm": 0.4, "cooldown_s": 0}
        )
        r.reading("dev-1", soil_moisture=0.28)  # `water` fires: pump.on from a rule
        r.reading("dev-1", soil_moisture=0.2)  # `water-2` is not held by it
        assert [c.action for c in await r.rule_commands("dev-1")] == ["pump.on", "pump.on"]
        assert r.rules.engine.counts["holds"] == 0
        await r.h.service.submit("dev-1", "lamp.on", origin="firestore")
        assert r.rules.engine.counts["holds"] == 0  # another actuator: no hold
        await r.h.service.submit("dev-1", "pump.on", {"seconds": 5}, origin="firestore")
        assert r.rules.engine.counts["holds"] == 2


async def test_a_new_threshold_acts_on_the_next_reading_and_keeps_todays_budget() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        await r.rules.set_thresholds("dev-1", {"soil_moisture": {"min": 0.3}})
        r.reading("dev-1", soil_moisture=0.35)
        assert await r.rule_commands("dev-1") == []
        await r.rules.set_thresholds("dev-1", {"water": {"min": 0.4}})  # the original name
        r.reading("dev-1", soil_moisture=0.35)
        [cmd] = await r.rule_commands("dev-1")
        assert cmd.action == "pump.on" and cmd.args == {"seconds": 20}
        assert r.rules.thresholds("dev-1") == {"soil_moisture": {"min": 0.4}}
        state = r.rules.states("thr.dev-1.soil_moisture.min")["dev-1"]
        assert state.fires_today == 1
        await r.rules.set_thresholds("dev-1", {"soil_moisture": {"min": 0.45}})
        assert r.rules.states("thr.dev-1.soil_moisture.min")["dev-1"].fires_today == 1
        await r.rules.set_thresholds("dev-1", {})  # clears them
        assert r.rules.rules("dev-1") == []


async def test_setting_the_same_thresholds_again_writes_nothing() -> None:
    async with rules_harness(commands={"max_on_seconds": 3600}) as r:
        await r.device("dev-1", actuators=("pump", "lamp", "fan"))
        t = {"temperature": {"max": 30}, "soil_moisture": {"min": 0.3}, "light": {"min": 200}}
        made = await r.rules.set_thresholds("dev-1", t)
        assert {i.rule.id for i in made} == {
            "thr.dev-1.temperature.max",
            "thr.dev-1.temperature.max.off",
            "thr.dev-1.soil_moisture.min",
            "thr.dev-1.light.min",
        }
        await r.rules.set_thresholds("dev-1", t)
        lines = await r.history("thr.dev-1.light.min")
        assert [line.data["reason"] for line in lines] == ["created"]
        assert r.rules.get("thr.dev-1.light.min").rule.tz == "UTC"  # the broker's zone


async def test_rules_that_cannot_work_are_refused_with_every_reason() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        with pytest.raises(RuleError) as bad:
            await r.rules.upsert_rule({**SOIL_RULE, "reading": "sol_moisture", "action": "fan.on"})
        assert bad.value.reasons == (
            "device 'dev-1': reading 'sol_moisture' is not one of the device's sensors: "
            "soil_moisture, temperature, light (did you mean 'soil_moisture'?)",
            "device 'dev-1': actuator 'fan' not declared by device: has pump, lamp",
        )
        with pytest.raises(RuleError, match="device 'dev-9' is not registered"):
            await r.rules.upsert_rule({**SOIL_RULE, "devices": ["dev-1", "dev-9"]})
        with pytest.raises(RuleError, match="unknown field 'treshold'"):
            await r.rules.upsert_rule({**SOIL_RULE, "treshold": 0.3})
        with pytest.raises(RuleError, match="actuator 'fan' not declared"):
            await r.rules.set_thresholds("dev-1", {"temperature": {"max": 30}})
        with pytest.raises(UnknownDeviceError):
            await r.rules.set_thresholds("dev-9", {"soil_moisture": {"min": 0.3}})
        await r.rules.upsert_rule(SOIL_RULE)
        with pytest.raises(RuleExistsError):
            await r.rules.put_rule(SOIL_RULE, create=True)
        assert [i.rule.id for i in r.rules.rules()] == ["water"]
        assert len(await r.store.list_rules()) == 1


async def test_an_identical_put_changes_nothing_and_patch_changes_one_field() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        first = await r.rules.upsert_rule(SOIL_RULE, origin="firestore")
        again = await r.rules.upsert_rule(SOIL_RULE, origin="firestore")
        assert again is first
        patched = await r.rules.patch_rule("water", {"enabled": False})
        assert patched.rule.enabled is False and patched.created_ms == first.created_ms
        r.reading("dev-1", soil_moisture=0.1)
        assert await r.rule_commands("dev-1") == []  # disabled: never evaluated
        reasons = [line.data["reason"] for line in await r.history("water")]
        assert reasons == ["created", "updated"]
        with pytest.raises(RuleError, match="differs"):
            await r.rules.patch_rule("water", {"id": "other"})


async def test_delete_keeps_the_history_and_a_deleted_rule_never_fires() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        await r.rules.upsert_rule(SOIL_RULE)
        r.reading("dev-1", soil_moisture=0.2)
        assert await r.rules.delete_rule("water") is True
        assert await r.rules.delete_rule("water") is False
        r.reading("dev-1", soil_moisture=0.45)
        r.reading("dev-1", soil_moisture=0.2)
        assert len(await r.rule_commands("dev-1")) == 1
        assert [x.data["reason"] for x in await r.history("water")] == ["created", None, "deleted"]
        assert await r.store.list_rules() == []


async def test_a_group_rule_keeps_a_budget_per_device_and_skips_devices_without_the_actuator() -> (
    None
):
    async with rules_harness() as r:
        await r.device("dev-1")
        await r.device("dev-2")
        await r.device("dev-3", actuators=("lamp",))
        await r.rules.upsert_rule({**SOIL_RULE, "devices": "*", "max_fires_per_day": 1})
        for dev in ("dev-1", "dev-2", "dev-3"):
            r.reading(dev, soil_moisture=0.2)
        assert len(await r.rule_commands("dev-1")) == 1
        assert len(await r.rule_commands("dev-2")) == 1
        assert await r.rule_commands("dev-3") == []
        assert [i.rule.id for i in r.rules.rules("dev-3")] == ["water"]


async def test_a_refused_command_is_a_fire_with_the_error_in_the_history() -> None:
    async with rules_harness(commands={"max_queue_per_device": 1}) as r:
        await r.device("dev-1")
        r.h.offline("dev-1")
        await r.h.service.submit("dev-1", "lamp.on", origin="api")  # fills the queue
        await r.rules.upsert_rule(SOIL_RULE)
        r.reading("dev-1", soil_moisture=0.2)
        lines = await r.history("water")
        assert [x.outcome for x in lines] == ["changed", "fire", "error"]
        fire, error = lines[1].data, lines[2].data
        assert error["command_id"] == fire["command_id"] and error["reason"] == "command_refused"
        assert "already has 1 command waiting" in error["error"]
        assert await r.h.service.get(fire["command_id"]) is None  # it was never queued
        assert r.rules.engine.counts["command_errors"] == 1


async def test_removing_a_device_removes_its_rules_and_leaves_its_groups() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        await r.device("dev-2")
        await r.rules.upsert_rule(SOIL_RULE)
        await r.rules.upsert_rule({**SOIL_RULE, "id": "both", "devices": ["dev-1", "dev-2"]})
        await r.h.registry.remove("dev-1")
        await r.settle()
        assert [i.rule.id for i in r.rules.rules()] == ["both"]
        assert r.rules.get("both").rule.devices == ("dev-2",)
        stored = {x.id: x.data["devices"] for x in await r.store.list_rules()}
        assert stored == {"both": ["dev-2"]}
        lines = await r.history("water")
        assert lines[-1].data["origin"] == "device-removed"


async def test_a_silent_sensor_gets_one_warning_per_silence() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        await r.rules.upsert_rule({**SOIL_RULE, "stale_after_s": 60})
        r.reading("dev-1", soil_moisture=0.5)
        r.clock.advance(30)
        assert r.rules.engine.check_silence() == 0
        r.clock.advance(40)
        assert r.rules.engine.check_silence() == 1
        r.clock.advance(100)
        assert r.rules.engine.check_silence() == 0  # once per silence
        r.reading("dev-1", soil_moisture=0.5)
        r.clock.advance(61)
        assert r.rules.engine.check_silence() == 1
        warnings = [x for x in await r.history("water") if x.outcome == "warning"]
        assert len(warnings) == 2
        assert warnings[0].data["reason"] == "sensor_silent"
        assert warnings[0].data["detail"].startswith("no soil_moisture reading for 70s (limit 60s)")


async def test_stale_readings_never_act() -> None:
    async with rules_harness() as r:
        await r.device("dev-1")
        await r.rules.upsert_rule({**SOIL_RULE, "stale_after_s": 60})
        r.reading("dev-1", ts_ms=r.clock() - 120_000, soil_moisture=0.1)
        assert await r.rule_commands("dev-1") == []
        [line] = [x for x in await r.history("water") if x.outcome == "suppressed"]
        assert line.data["reason"] == "stale" and "2m old" in line.data["detail"]


async def test_history_lines_older_than_the_retention_are_deleted() -> None:
    async with rules_harness(history_keep_days=1) as r:
        await r.device("dev-1")
        await r.rules.upsert_rule(SOIL_RULE)
        await r.settle()
        r.clock.advance(2 * 86400)
        r.reading("dev-1", soil_moisture=0.2)
        await r.settle()
        assert await r.rules.engine.prune_once() == 1
        assert [x.outcome for x in await r.history("water")] == ["fire"]


async def test_a_rule_the_outbox_would_refuse_is_refused_when_it_is_put() -> None:
    async with rules_harness(commands={"max_on_seconds": 300}) as r:
        await r.device("dev-1")
        with pytest.raises(RuleError) as bad:
            await r.rules.upsert_rule({**SOIL_RULE, "args": {"seconds": 400}})
        assert bad.value.reasons == (
            "pump.on: seconds must be at most 300 (commands.max_on_seconds, the actuator "
            "safety limit): the command outbox would refuse every fire of rule 'water'",
        )
        with pytest.raises(
            RuleError, match=r"lamp\.on: seconds .* of rule .thr\.dev-1\.light\.min"
        ):  # 3600 s
            await r.rules.set_thresholds("dev-1", {"light": {"min": 200}})
        assert r.rules.rules() == []
