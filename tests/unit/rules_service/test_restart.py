"""A restart keeps the rules, today's budget and cooldown, and a manual hold in force."""

from __future__ import annotations

import pytest

from planty_broker.domain.rules.records import StoredRule
from planty_broker.storage.memory import MemoryStore
from tests.unit.rules_service.harness import SOIL_RULE, Clock, rules_harness

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_rules_budget_and_cooldown_survive_a_restart() -> None:
    store, clock = MemoryStore(), Clock()
    async with rules_harness(store, clock) as r:
        await r.device("dev-1")
        await r.rules.upsert_rule({**SOIL_RULE, "max_fires_per_day": 2, "cooldown_s": 600})
        r.reading("dev-1", soil_moisture=0.2)
        r.reading("dev-1", soil_moisture=0.45)  # re-armed
        assert len(await r.rule_commands("dev-1")) == 1
    clock.advance(60)
    async with rules_harness(store, clock) as r:
        assert [i.rule.id for i in r.rules.rules()] == ["water"]
        state = r.rules.states("water")["dev-1"]
        assert state.fires_today == 1 and state.last_fire_ms is not None
        r.h.online("dev-1")
        assert state.armed is False  # the replayed fire disarmed it, as before the restart
        r.reading("dev-1", soil_moisture=0.45)  # recovered: re-armed, only the cooldown is left
        r.reading("dev-1", soil_moisture=0.2)
        assert len(await r.rule_commands("dev-1")) == 1  # 1 min after the fire: cooldown
        lines = await r.history("water")
        assert (lines[-1].outcome, lines[-1].data["reason"]) == ("suppressed", "cooldown")
        clock.advance(600)
        r.reading("dev-1", soil_moisture=0.2)
        assert len(await r.rule_commands("dev-1")) == 2  # second and last fire of the day
        r.reading("dev-1", soil_moisture=0.45)
        clock.advance(600)
        r.reading("dev-1", soil_moisture=0.2)
        assert len(await r.rule_commands("dev-1")) == 2
        assert (await r.history("water"))[-1].data["reason"] == "budget"


async def test_a_manual_command_still_holds_the_rule_after_a_restart() -> None:
    store, clock = MemoryStore(), Clock()
    async with rules_harness(store, clock) as r:
        await r.device("dev-1")
        await r.rules.upsert_rule({**SOIL_RULE, "hold_s": 3600})
        await r.h.service.submit("dev-1", "pump.off", origin="api")
    async with rules_harness(store, clock) as r:
        r.h.online("dev-1")
        r.reading("dev-1", soil_moisture=0.2)
        assert await r.rule_commands("dev-1") == []
        assert (await r.history("water"))[-1].data["reason"] == "override"


async def test_a_stored_rule_that_no_longer_parses_is_reported_not_loaded() -> None:
    store = MemoryStore()
    await store.open()
    bad = {**SOIL_RULE, "op": "=="}
    await store.save_rules([StoredRule("water", bad, "api", 1, 1)])
    async with rules_harness(store) as r:
        assert r.rules.rules() == []
        assert r.rules.unusable == {"water": ["op '==' must be one of <, <=, >, >="]}
        await r.device("dev-1")
        await r.rules.upsert_rule(SOIL_RULE)  # putting it again repairs it
        assert r.rules.unusable == {}
