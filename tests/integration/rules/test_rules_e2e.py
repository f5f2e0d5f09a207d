"""Rules end to end: real gateway, real Mosquitto over TLS, simulated ESP32s and raw clients."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from planty_broker.services.registry import now_ms
from tests.integration.commands.conftest import sim_device
from tests.integration.core.conftest import eventually
from tests.integration.rules.conftest import Probe, history, probe, rule_commands

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def soil_rule(rule_id: str, device_id: str, **kw: object) -> dict:
    rule = {
        "id": rule_id,
        "devices": device_id,
        "reading": "soil_moisture",
        "op": "<",
        "threshold": 0.30,
        "rearm": 0.40,
        "action": "pump.on",
        "args": {"seconds": 20},
        "cooldown_s": 0,
    }
    rule.update(kw)
    return rule


async def stored(api: httpx.AsyncClient, dev: Probe, n: int) -> None:
    """Wait until the gateway stored `n` readings of the device (rules run on each commit)."""

    async def check() -> bool:
        r = await api.get(f"/api/v1/devices/{dev.device_id}/telemetry", params={"limit": 1000})
        return len(r.json()["readings"]) >= n

    await eventually(check, timeout=10)
    await asyncio.sleep(0.3)  # the fire task reaches the outbox


async def test_soil_dries_the_rule_waters_the_plant_and_the_history_says_why(
    rapi: httpx.AsyncClient,
) -> None:
    """The simulator's pot dries (sped up 1200x); the pump it runs wets it again."""
    async with sim_device(rapi, "rule", interval_s=0.2, time_scale=1200.0) as dev:
        start = dev.readings()["soil_moisture"]
        rule = soil_rule(
            "dry-" + dev.device_id,
            dev.device_id,
            threshold=round(start - 0.004, 4),
            rearm=round(start + 0.01, 4),
            args={"seconds": 2},
            cooldown_s=600,
        )
        r = await rapi.post("/api/v1/rules", json=rule)
        assert r.status_code == 201, r.text

        async def watered() -> list[dict]:
            cmds = await rule_commands(rapi, dev.device_id)
            return [c for c in cmds if c["state"] == "acked"]

        [cmd] = await eventually(watered, timeout=20)
        assert (cmd["action"], cmd["args"]) == ("pump.on", {"seconds": 2})
        assert [e.command_id for e in dev.executions(action="pump.on")] == [cmd["id"]]

        async def wetter() -> bool:
            return dev.readings()["soil_moisture"] > start

        await eventually(wetter, timeout=10)

        async def fires() -> list[dict]:
            # the fire's history line is written by its own task: on a loaded machine it
            # may commit a moment after the command's ack
            lines = await history(rapi, rule["id"], limit=1000)
            return [e for e in lines if e["outcome"] == "fire"]

        [fire] = await eventually(fires, timeout=10)
        assert fire["value"] < rule["threshold"] and fire["reading"] == "soil_moisture"
        assert fire["reading_at"] is not None and fire["command_id"] == cmd["id"]
        assert fire["command"]["state"] == "acked" and fire["command"]["result"]["on"] is True
        assert fire["detail"].startswith(f"soil_moisture {fire['value']:g} < {rule['threshold']:g}")


async def test_noisy_readings_around_the_threshold_do_not_toggle_the_pump(
    rapi: httpx.AsyncClient,
) -> None:
    async with probe(rapi) as dev:
        rule = soil_rule("noisy-" + dev.device_id, dev.device_id)
        assert (await rapi.post("/api/v1/rules", json=rule)).status_code == 201
        noisy = (0.31, 0.29, 0.31, 0.295, 0.305, 0.29, 0.35, 0.28, 0.39, 0.29)
        for v in noisy:
            dev.send(soil_moisture=v)
        await stored(rapi, dev, len(noisy))
        assert len(await rule_commands(rapi, dev.device_id)) == 1
        await eventually(lambda: dev.commands("pump.on"))
        dev.send(soil_moisture=0.41)  # recovered past the re-arm bound
        dev.send(soil_moisture=0.29)
        await stored(rapi, dev, len(noisy) + 2)
        assert len(await rule_commands(rapi, dev.device_id)) == 2
        fires = [e for e in await history(rapi, rule["id"]) if e["outcome"] == "fire"]
        assert [f["value"] for f in fires] == [0.29, 0.29]


async def test_a_manual_pump_off_holds_against_the_rule(rapi: httpx.AsyncClient) -> None:
    async with probe(rapi) as dev:
        rule = soil_rule("hold-" + dev.device_id, dev.device_id, hold_s=300)
        assert (await rapi.post("/api/v1/rules", json=rule)).status_code == 201
        r = await rapi.post(
            f"/api/v1/devices/{dev.device_id}/commands", json={"action": "pump.off"}
        )
        assert r.status_code == 202, r.text
        manual = r.json()
        [off] = await eventually(lambda: dev.commands("pump.off"))
        dev.ack(off)
        dev.send(soil_moisture=0.2)
        await stored(rapi, dev, 1)
        assert await rule_commands(rapi, dev.device_id) == []
        assert dev.commands("pump.on") == []
        lines = await history(rapi, rule["id"])
        assert [(e["outcome"], e["reason"]) for e in lines] == [
            ("changed", "created"),
            ("hold", "manual"),
            ("suppressed", "override"),
        ]
        assert lines[1]["command_id"] == manual["id"] and lines[1]["command"]["state"] == "acked"
        assert "a manual pump command holds rules for another 4m" in lines[2]["detail"]
        shown = (await rapi.get(f"/api/v1/rules/{rule['id']}")).json()
        [state] = shown["states"]
        assert state["held_until"] is not None and state["suppressed_by"] == "override"


async def test_a_threshold_changed_through_the_api_acts_on_the_next_reading(
    rapi: httpx.AsyncClient,
) -> None:
    async with probe(rapi) as dev:
        url = f"/api/v1/devices/{dev.device_id}/thresholds"
        r = await rapi.put(url, json={"soil_moisture": {"min": 0.3}})
        assert r.status_code == 200, r.text
        assert r.json()["thresholds"] == {"soil_moisture": {"min": 0.3}}
        dev.send(soil_moisture=0.35)
        await stored(rapi, dev, 1)
        assert await rule_commands(rapi, dev.device_id) == []
        r = await rapi.put(url, json={"soil_moisture": {"min": 0.4}})
        assert r.status_code == 200, r.text
        dev.send(soil_moisture=0.35)
        await stored(rapi, dev, 2)
        [cmd] = await rule_commands(rapi, dev.device_id)
        assert (cmd["action"], cmd["args"]) == ("pump.on", {"seconds": 20})
        got = (await rapi.get(url)).json()
        assert got["thresholds"] == {"soil_moisture": {"min": 0.4}}
        [made] = got["rules"]
        assert made["id"] == f"thr.{dev.device_id}.soil_moisture.min" and made["rearm"] == 0.5
        reasons = [e["reason"] for e in await history(rapi, made["id"]) if e["outcome"] != "fire"]
        assert reasons == ["created", "updated"]


async def test_rules_that_cannot_work_are_refused_with_422_saying_why(
    rapi: httpx.AsyncClient,
) -> None:
    async with probe(rapi) as dev:
        d = dev.device_id
        r = await rapi.post(
            "/api/v1/rules", json=soil_rule("bad-" + d, d, reading="sol_moisture", action="fan.on")
        )
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["code"] == "invalid_rule"
        assert err["reasons"] == [
            f"device '{d}': reading 'sol_moisture' is not one of the device's sensors: "
            "temperature, soil_moisture, light (did you mean 'soil_moisture'?)",
            f"device '{d}': actuator 'fan' not declared by device: has pump, lamp",
        ]
        r = await rapi.put(f"/api/v1/devices/{d}/thresholds", json={"temperature": {"max": 30}})
        assert r.status_code == 422
        assert r.json()["error"]["reasons"] == [
            "actuator 'fan' not declared by device: has pump, lamp"
        ]
        r = await rapi.post("/api/v1/rules", json=soil_rule("long-" + d, d, args={"seconds": 4000}))
        assert r.status_code == 422
        assert "seconds must be at most 3600 (commands.max_on_seconds" in r.text
        r = await rapi.put(f"/api/v1/devices/{d}/thresholds", json={"soil_moisture": {"min": 30}})
        assert "outside 0..1" in r.json()["error"]["message"]
        r = await rapi.post("/api/v1/rules", json=soil_rule("ghost-" + d, "no-such-device"))
        assert r.status_code == 422
        assert "device 'no-such-device' is not registered" in r.json()["error"]["message"]
        r = await rapi.put(f"/api/v1/rules/x-{d}", json={**soil_rule(f"x-{d}", d), "op": "=="})
        assert r.status_code == 422 and "op '==' must be one of" in r.json()["error"]["message"]
        r = await rapi.put("/api/v1/devices/no-such-device/thresholds", json={})
        assert r.status_code == 404
        assert (await rapi.get("/api/v1/rules/never-made")).status_code == 404
        assert (await rapi.get("/api/v1/rules/never-made/history")).status_code == 404
        assert (await rapi.delete("/api/v1/rules/never-made")).status_code == 404
        ok = soil_rule("dup-" + d, d)
        assert (await rapi.post("/api/v1/rules", json=ok)).status_code == 201
        assert (await rapi.post("/api/v1/rules", json=ok)).status_code == 409
        mine = (await rapi.get("/api/v1/rules", params={"device": d})).json()["rules"]
        assert [x["id"] for x in mine] == ["dup-" + d]  # nothing refused was kept


async def test_crud_at_run_time_and_the_rule_events_in_the_event_log(
    rapi: httpx.AsyncClient,
) -> None:
    async with probe(rapi) as dev:
        rule = soil_rule("crud-" + dev.device_id, dev.device_id, threshold=0.2, rearm=0.3)
        r = await rapi.put(f"/api/v1/rules/{rule['id']}", json=rule)
        assert r.status_code == 201
        assert (await rapi.put(f"/api/v1/rules/{rule['id']}", json=rule)).status_code == 200
        dev.send(soil_moisture=0.25)
        await stored(rapi, dev, 1)
        assert await rule_commands(rapi, dev.device_id) == []
        r = await rapi.patch(f"/api/v1/rules/{rule['id']}", json={"threshold": 0.3})
        assert r.status_code == 200 and r.json()["threshold"] == 0.3
        dev.send(soil_moisture=0.25)
        await stored(rapi, dev, 2)
        assert len(await rule_commands(rapi, dev.device_id)) == 1
        assert (await rapi.delete(f"/api/v1/rules/{rule['id']}")).status_code == 204
        dev.send(soil_moisture=0.35)
        dev.send(soil_moisture=0.1)
        await stored(rapi, dev, 4)
        assert len(await rule_commands(rapi, dev.device_id)) == 1  # deleted: no second fire
        lines = await history(rapi, rule["id"])  # the history outlives the rule
        assert [e["outcome"] for e in lines] == ["changed", "changed", "fire", "changed"]
        r = await rapi.get("/api/v1/events", params={"types": "rule", "limit": 10_000})
        assert r.status_code == 200, r.text
        mine = [e for e in r.json()["events"] if e["data"]["rule_id"] == rule["id"]]
        assert [e["data"]["outcome"] for e in mine] == ["changed", "changed", "fire", "changed"]


async def test_a_silent_sensor_is_reported_once(rapi: httpx.AsyncClient) -> None:
    async with probe(rapi) as dev:
        rule = soil_rule("quiet-" + dev.device_id, dev.device_id, stale_after_s=1)
        assert (await rapi.post("/api/v1/rules", json=rule)).status_code == 201
        dev.send(soil_moisture=0.5)

        async def warned() -> list[dict]:
            return [e for e in await history(rapi, rule["id"]) if e["outcome"] == "warning"]

        [warning] = await eventually(warned, timeout=10)
        assert warning["reason"] == "sensor_silent"
        assert "pump.on cannot be triggered" in warning["detail"]
        await asyncio.sleep(1.5)  # three more checks: still one warning for this silence
        assert len(await warned()) == 1


async def test_a_stale_reading_never_waters(rapi: httpx.AsyncClient) -> None:
    async with probe(rapi) as dev:
        rule = soil_rule("stale-" + dev.device_id, dev.device_id, stale_after_s=60)
        assert (await rapi.post("/api/v1/rules", json=rule)).status_code == 201
        dev.send(ts_ms=now_ms() - 3_600_000, soil_moisture=0.1)  # an hour old
        await stored(rapi, dev, 1)
        assert await rule_commands(rapi, dev.device_id) == []
        [line] = [e for e in await history(rapi, rule["id"]) if e["outcome"] == "suppressed"]
        assert line["reason"] == "stale" and "reading is 60m old (limit 60s)" in line["detail"]
