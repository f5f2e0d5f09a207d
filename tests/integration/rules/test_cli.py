"""`planty rules` against a running gateway: what a user types and sees."""

from __future__ import annotations

import json

import httpx
import pytest

from planty_broker.app import Gateway
from tests.integration.core.conftest import eventually
from tests.integration.core.test_cli import planty
from tests.integration.rules.conftest import probe, rule_commands

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_add_list_history_disable_delete(rapi: httpx.AsyncClient, rgw: Gateway) -> None:
    url = rgw.api_url
    async with probe(rapi) as dev:
        d = dev.device_id
        rule_id = "cli-" + d
        r = await planty(
            "rules", "add", rule_id, "-d", d, "--when", "soil_moisture < 0.3", "--then",
            "pump.on", "--arg", "seconds=15", "--rearm", "0.4", "--cooldown", "30m",
            "--max-fires", "4", "--url", url,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert f"rule {rule_id}: when soil_moisture < 0.3 then pump.on" in r.stdout
        assert "cooldown 1800s, max 4/day" in r.stdout
        r = await planty("rules", "list", "--device", d, "--url", url)
        assert r.returncode == 0 and rule_id in r.stdout and "rearm 0.4" in r.stdout
        dev.send(soil_moisture=0.22)
        await eventually(lambda: rule_commands(rapi, d))
        r = await planty("rules", "history", rule_id, "--url", url)
        assert r.returncode == 0, r.stderr
        assert "fire" in r.stdout and "soil_moisture 0.22 < 0.3" in r.stdout
        r = await planty("rules", "history", rule_id, "--json", "--url", url)
        fire = json.loads(r.stdout)["events"][0]
        assert fire["outcome"] == "fire" and fire["value"] == 0.22
        r = await planty("rules", "disable", rule_id, "--url", url)
        assert r.returncode == 0 and "disabled" in r.stdout
        shown = json.loads((await planty("rules", "show", rule_id, "--url", url)).stdout)
        assert shown["enabled"] is False and shown["states"][0]["fires_today"] == 1
        r = await planty("rules", "delete", rule_id, "--url", url)
        assert r.returncode == 0 and "deleted" in r.stdout
        r = await planty("rules", "show", rule_id, "--url", url)
        assert r.returncode == 1 and "no rule with id" in r.stderr


async def test_thresholds_and_one_line_refusals(rapi: httpx.AsyncClient, rgw: Gateway) -> None:
    url = rgw.api_url
    async with probe(rapi) as dev:
        d = dev.device_id
        r = await planty(
            "rules", "thresholds", d, "--set", "soil_moisture.min=0.3", "--set", "light.min=200",
            "--url", url,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert f"{d}: light min 200, soil_moisture min 0.3" in r.stdout
        assert f"thr.{d}.light.min: light < 200 -> lamp.on (rearm 250, 06:00-20:00 UTC" in r.stdout
        r = await planty("rules", "thresholds", d, "--url", url)
        assert "soil_moisture min 0.3" in r.stdout
        r = await planty("rules", "thresholds", d, "--set", "temperature.max=30", "--url", url)
        assert r.returncode == 1
        assert "actuator 'fan' not declared by device: has pump, lamp" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        r = await planty("rules", "thresholds", d, "--clear", "--url", url)
        assert r.returncode == 0 and "no thresholds" in r.stdout
        r = await planty("rules", "add", "x-" + d, "-d", d, "--when", "soil < 0.3", "--url", url)
        assert r.returncode == 1 and "missing field 'action'" in r.stderr
        r = await planty("rules", "add", "x-" + d, "--when", "soil is dry", "--url", url)
        assert r.returncode == 1 and "use '<reading> <op> <number>'" in r.stderr
        r = await planty("rules", "add", "x-" + d, "--cooldown", "soon", "--url", url)
        assert r.returncode == 1 and "a duration like 90s, 30m" in r.stderr
