"""A kill -9 of the gateway: the rules come back and the pump's daily budget is still spent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.core.conftest import RawDevice, eventually
from tests.integration.core.proc import GatewayProcess
from tests.integration.rules.conftest import history, rule_commands

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

RULE = {
    "id": "water-once",
    "devices": "rule-restart",
    "reading": "soil_moisture",
    "op": "<",
    "threshold": 0.3,
    "rearm": 0.4,
    "action": "pump.on",
    "args": {"seconds": 20},
    "max_fires_per_day": 1,
}


async def test_rules_and_todays_budget_survive_a_kill_9(tmp_path: Path) -> None:
    gw = GatewayProcess(
        tmp_path / "data", "rules-restart-admin-token-0123456789", PLANTY_RULES_TIMEZONE="UTC"
    )
    dev: RawDevice | None = None
    seq = 0

    def send(v: float) -> None:
        nonlocal seq
        assert dev is not None
        dev.publish(
            "telemetry", json.dumps({"seq": seq, "readings": {"soil_moisture": v}}).encode()
        )
        seq += 1

    try:
        await gw.start()
        async with gw.client() as api:
            creds = (await api.post("/api/v1/devices", json={"id": "rule-restart"})).json()
            dev = RawDevice("rule-restart", creds["token"], creds["mqtt"])
            await dev.connect()
            status = {"online": True, "sensors": ["soil_moisture"], "actuators": ["pump"]}
            dev.publish("status", json.dumps(status).encode(), retain=True)

            async def declared() -> bool:
                return bool((await api.get("/api/v1/devices/rule-restart")).json()["actuators"])

            await eventually(declared)
            assert (await api.post("/api/v1/rules", json=RULE)).status_code == 201
            send(0.2)

            async def fired() -> list[dict]:
                return [e for e in await history(api, "water-once") if e["outcome"] == "fire"]

            await eventually(fired)
        gw.kill9()
        await gw.start()
        async with gw.client() as api:
            rule = (await api.get("/api/v1/rules/water-once")).json()
            assert rule["max_fires_per_day"] == 1
            [state] = rule["states"]
            assert state["fires_today"] == 1 and state["last_fire_at"] is not None
            send(0.45)  # the soil recovered: re-armed
            send(0.2)  # dry again, but today's one fire is spent

            async def budget() -> list[dict]:
                return [e for e in await history(api, "water-once") if e["reason"] == "budget"]

            [line] = await eventually(budget, timeout=15)
            assert "the daily budget is spent (fire 1 of 1 today)" in line["detail"]
            assert len(await rule_commands(api, "rule-restart")) == 1
    finally:
        if dev is not None:
            await dev.close()
        gw.cleanup()
