"""Commands end to end: real gateway, real Mosquitto over TLS, simulated ESP32s."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from planty_broker.app import Gateway
from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import Faults
from tests.integration.commands.conftest import online_in_api, profile, register, sim_device
from tests.integration.core.conftest import RawDevice, eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def command(api: httpx.AsyncClient, cid: str) -> dict:
    r = await api.get(f"/api/v1/commands/{cid}")
    assert r.status_code == 200, r.text
    return r.json()


async def final(api: httpx.AsyncClient, cid: str, timeout: float = 20) -> dict:
    async def check() -> dict | None:
        c = await command(api, cid)
        return c if c["final"] else None

    result: dict = await eventually(check, timeout=timeout, every=0.1)
    return result


async def test_command_to_an_online_device_is_acked_with_its_result_and_rtt(
    qapi: httpx.AsyncClient,
) -> None:
    async with sim_device(qapi) as dev:
        r = await qapi.post(
            f"/api/v1/devices/{dev.device_id}/commands",
            json={"action": "pump.on", "args": {"seconds": 2}, "wait_s": 10},
        )
        assert r.status_code == 200, r.text  # final within wait_s
        c = r.json()
        assert c["state"] == "acked" and c["final"] is True
        assert c["result"] == {"on": True, "value": 1.0, "seconds": 2}
        # recorded, at millisecond resolution: a loopback ack may well take under 1 ms
        assert c["rtt_ms"] is not None and 0 <= c["rtt_ms"] < 10_000
        assert c["attempts"] == 1
        shown = await command(qapi, c["id"])
        assert [h["state"] for h in shown["history"]] == ["queued", "sent", "acked"]
        assert [e.command_id for e in dev.executions(action="pump.on")] == [c["id"]]
        assert dev.actuator("pump").on is True
        lat = (await qapi.get(f"/api/v1/devices/{dev.device_id}/latency")).json()
        assert lat["count"] >= 1 and lat["p50_ms"] >= 0 and lat["p99_ms"] >= lat["p50_ms"]
        events = (
            await qapi.get("/api/v1/events", params={"types": "command", "limit": 10_000})
        ).json()
        mine = [e["data"]["state"] for e in events["events"] if e["data"]["id"] == c["id"]]
        assert mine == ["queued", "sent", "acked"]


async def test_pings_measure_latency_of_an_idle_device(qapi: httpx.AsyncClient) -> None:
    async with sim_device(qapi) as dev:

        async def measured() -> bool:
            lat = (await qapi.get(f"/api/v1/devices/{dev.device_id}/latency")).json()
            return lat["count"] >= 2

        await eventually(measured, timeout=10)  # ping_interval_s = 1 in these tests
        pings = dev.executions(action="ping")
        assert len(pings) >= 2 and all(e.command_id.startswith("p-") for e in pings)
        assert dev.executions() == pings  # nothing but pings reached it


async def test_offline_device_gets_its_command_when_it_connects_20_s_later_and_a_short_ttl_expires(
    qapi: httpx.AsyncClient,
) -> None:
    """The real 20 s: the command waits in the outbox (queued) the whole time; a second
    command with ttl 5 s expires while the device is away and is never delivered."""
    creds = await register(qapi)
    dev = SimDevice(creds, profile())
    await dev.start()
    await dev.wait_online(15)
    await online_in_api(qapi, dev.device_id)  # it declared its actuators once
    await dev.stop()
    await online_in_api(qapi, dev.device_id, want=False)
    try:
        waiting = (
            await qapi.post(f"/api/v1/devices/{dev.device_id}/commands", json={"action": "lamp.on"})
        ).json()
        short = (
            await qapi.post(
                f"/api/v1/devices/{dev.device_id}/commands",
                json={"action": "pump.on", "args": {"seconds": 1}, "ttl_s": 5},
            )
        ).json()
        assert waiting["state"] == short["state"] == "queued"
        await asyncio.sleep(20)
        assert (await command(qapi, waiting["id"]))["state"] == "queued"
        expired = await command(qapi, short["id"])
        assert expired["state"] == "expired" and expired["attempts"] == 0
        assert "before it could be sent" in expired["error"]
        await dev.start()
        done = await final(qapi, waiting["id"])
        assert done["state"] == "acked" and done["attempts"] == 1
        assert [e.command_id for e in dev.executions()] == [waiting["id"]]  # only lamp.on ran
        assert dev.stats.commands_expired == 0  # the expired one never reached the device
    finally:
        await dev.stop()


async def test_a_device_that_never_acks_gets_re_sends_then_failed_and_ran_it_once(
    qapi: httpx.AsyncClient,
) -> None:
    async with sim_device(qapi, faults=Faults(ack=False)) as dev:
        r = await qapi.post(
            f"/api/v1/devices/{dev.device_id}/commands",
            json={"action": "lamp.on", "wait_s": 15},
        )
        c = r.json()
        assert c["state"] == "failed", c
        assert c["attempts"] == 3 and c["error"] == "no ack after 3 attempts (1 s each)"
        history = (await command(qapi, c["id"]))["history"]
        assert [(h["state"], h["attempt"]) for h in history] == [
            ("queued", 0),
            ("sent", 1),
            ("sent", 2),
            ("sent", 3),
            ("failed", 3),
        ]
        assert len(dev.executions(command_id=c["id"])) == 1  # re-sends were deduplicated
        assert dev.stats.commands_duplicate >= 2
        d = (await qapi.get(f"/api/v1/devices/{dev.device_id}")).json()
        assert d["counts"]["errors_by_kind"].get("ack_timeout", 0) >= 3


async def test_read_returns_the_readings_and_stores_them_as_telemetry(
    qapi: httpx.AsyncClient,
) -> None:
    async with sim_device(qapi) as dev:
        r = await qapi.post(f"/api/v1/devices/{dev.device_id}/read", json={})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body["readings"]) == {"temperature", "soil_moisture", "light"}
        assert body["command"]["state"] == "acked"
        t = (await qapi.get(f"/api/v1/devices/{dev.device_id}/telemetry")).json()
        assert [x["readings"] for x in t["readings"] if x["seq"] == -1] == [
            {k: float(v) for k, v in body["readings"].items()}
        ]


async def test_read_of_an_offline_device_times_out_with_504(qapi: httpx.AsyncClient) -> None:
    creds = await register(qapi)
    r = await qapi.post(f"/api/v1/devices/{creds.device_id}/read", json={"wait_s": 0.5})
    assert r.status_code == 504
    err = r.json()["error"]
    assert err["code"] == "device_timeout" and err["command"]["state"] == "queued"


async def test_coalescing_and_cancel(qapi: httpx.AsyncClient) -> None:
    creds = await register(qapi)
    dev = SimDevice(creds, profile())
    await dev.start()
    await dev.wait_online(15)
    await online_in_api(qapi, dev.device_id)
    await dev.stop()
    await online_in_api(qapi, dev.device_id, want=False)
    url = f"/api/v1/devices/{dev.device_id}/commands"
    try:
        on = (await qapi.post(url, json={"action": "pump.on", "args": {"seconds": 60}})).json()
        lamp = (await qapi.post(url, json={"action": "lamp.on"})).json()
        off = (await qapi.post(url, json={"action": "pump.off"})).json()
        replaced = await command(qapi, on["id"])
        assert replaced["state"] == "superseded" and replaced["superseded_by"] == off["id"]
        r = await qapi.delete(f"/api/v1/commands/{lamp['id']}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        r = await qapi.delete(f"/api/v1/commands/{lamp['id']}")
        assert r.status_code == 409 and "already cancelled" in r.json()["error"]["message"]
        listed = (await qapi.get(url, params={"state": "queued"})).json()
        assert [c["id"] for c in listed["commands"]] == [off["id"]]
        await dev.start()
        assert (await final(qapi, off["id"]))["state"] == "acked"
        assert [e.action for e in dev.executions()] == ["pump.off"]  # neither pump.on nor lamp.on
        sent = (await qapi.post(url, json={"action": "read", "wait_s": 10})).json()
        r = await qapi.delete(f"/api/v1/commands/{sent['id']}")
        assert r.status_code == 409
    finally:
        await dev.stop()


async def test_bad_input_is_refused_clearly(qapi: httpx.AsyncClient, qgw: Gateway) -> None:
    r = await qapi.post("/api/v1/devices/no-such-device/commands", json={"action": "read"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_device"
    async with sim_device(qapi) as dev:
        url = f"/api/v1/devices/{dev.device_id}/commands"
        r = await qapi.post(url, json={"action": "fan.on"})
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["code"] == "invalid_action"
        assert err["valid_actions"] == [
            "ping",
            "read",
            "config",
            "pump.on",
            "pump.off",
            "pump.set",
            "lamp.on",
            "lamp.off",
            "lamp.set",
        ]
        for ttl in (0, -5, 3601):
            r = await qapi.post(url, json={"action": "read", "ttl_s": ttl})
            assert r.status_code == 422 and "ttl_s" in r.json()["error"]["message"], r.text
        r = await qapi.post(url, json={"action": "lamp.set", "args": {"value": "bright"}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_args"
        r = await qapi.get(url, params={"state": "lost"})
        assert r.status_code == 422
        r = await qapi.get("/api/v1/commands/c-nothing")
        assert r.status_code == 404


async def test_queue_full_is_429_and_nothing_is_dropped(qapi: httpx.AsyncClient) -> None:
    creds = await register(qapi)  # never online: everything waits
    url = f"/api/v1/devices/{creds.device_id}/commands"
    ids = [(await qapi.post(url, json={"action": "read"})).json()["id"] for _ in range(5)]
    r = await qapi.post(url, json={"action": "ping"})
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "queue_full" and "max_queue_per_device = 5" in err["message"]
    listed = (await qapi.get(url)).json()
    assert sorted(c["id"] for c in listed["commands"]) == sorted(ids)


async def test_ack_for_an_unknown_command_is_a_device_error_and_still_acknowledged(
    qapi: httpx.AsyncClient,
) -> None:
    creds = await register(qapi)
    dev = RawDevice(
        creds.device_id,
        creds.token,
        {"host": creds.host, "port": creds.port, "ca_pem": creds.ca_pem},
    )
    await dev.connect()
    try:
        dev.publish("status", json.dumps({"online": True, "interval_s": 60}).encode(), retain=True)
        dev.publish("ack", json.dumps({"id": "c-made-up", "ok": True}).encode())

        async def counted() -> dict | None:
            d = (await qapi.get(f"/api/v1/devices/{creds.device_id}")).json()
            return d if d["counts"]["errors_by_kind"].get("unknown_command_id") == 1 else None

        await eventually(counted)
        await eventually(lambda: dev.client._persistent_storage.is_empty)  # PUBACKed
        events = (
            await qapi.get("/api/v1/events", params={"types": "device_error", "limit": 10_000})
        ).json()
        assert any(
            e["device_id"] == creds.device_id and e["data"]["kind"] == "unknown_command_id"
            for e in events["events"]
        )
    finally:
        await dev.close()
