"""Crash and restart: a kill -9 of the gateway loses no QoS 1 telemetry; presence is rebuilt honestly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.core.conftest import RawDevice, eventually
from tests.integration.core.proc import GatewayProcess

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_kill9_then_restart_loses_nothing(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "data", "restart-admin-token-123456")
    dev: RawDevice | None = None
    try:
        await gw.start()
        async with gw.client() as api:
            creds = (await api.post("/api/v1/devices", json={"id": "restart-1"})).json()
        dev = RawDevice("restart-1", creds["token"], creds["mqtt"])
        await dev.connect()
        dev.publish("status", json.dumps({"online": True, "interval_s": 60}).encode(), retain=True)
        for seq in range(100):
            dev.publish("telemetry", json.dumps({"seq": seq, "readings": {"light": seq}}).encode())
        await eventually(lambda: dev.client._persistent_storage.is_empty)

        mosquitto = gw.mosquitto_pid()
        gw.kill9()  # no chance to flush or say goodbye
        assert mosquitto is not None
        os.kill(mosquitto, 0)  # the fleet's MQTT server outlives the gateway crash

        # While the gateway is dead, the device keeps publishing; Mosquitto acknowledges and
        # queues every message for the gateway's persistent session.
        for seq in range(100, 600):
            dev.publish("telemetry", json.dumps({"seq": seq, "readings": {"light": seq}}).encode())
        await eventually(lambda: dev.client._persistent_storage.is_empty)

        await gw.start()
        assert gw.mosquitto_pid() == mosquitto  # adopted, not restarted
        async with gw.client() as api:
            async def all_stored() -> bool:
                r = await api.get("/api/v1/devices/restart-1/telemetry", params={"limit": 10000})
                return r.json()["count"] >= 600

            await eventually(all_stored, timeout=30)
            r = await api.get("/api/v1/devices/restart-1/telemetry", params={"limit": 10000})
            seqs = sorted(x["seq"] for x in r.json()["readings"])
            assert seqs == list(range(600))  # nothing lost, nothing twice
            d = (await api.get("/api/v1/devices/restart-1")).json()
            assert d["presence"]["state"] == "online"  # rebuilt from the retained status
    finally:
        if dev:
            await dev.close()
        gw.cleanup()


async def test_graceful_restart_rebuilds_presence_without_faking_it(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "data", "restart-admin-token-123456")
    try:
        await gw.start()
        async with gw.client() as api:
            on = (await api.post("/api/v1/devices", json={"id": "dev-on"})).json()
            await api.post("/api/v1/devices", json={"id": "dev-never"})
        dev = RawDevice("dev-on", on["token"], on["mqtt"])
        await dev.connect()
        dev.publish("status", b'{"online": true, "interval_s": 1}', retain=True)
        async with gw.client() as api:
            await eventually(lambda: _state(api, "dev-on", "online"))
        await dev.close()  # clean disconnect: the will does not fire, the retained status stays online
        assert gw.stop() == 0
        await gw.start()
        async with gw.client() as api:
            # never connected: never seen, before and after the restart, never "offline"
            d = await eventually(lambda: _state(api, "dev-never", "never_seen"), timeout=15)
            assert d["presence"]["cause"] == "registered"
            # its stale retained "online" is believed only until the silence bound
            # (max(3 x 1 s, 1.5 x keepalive 5 s) = 7.5 s) proves otherwise
            d = await eventually(lambda: _state(api, "dev-on", "offline"), timeout=20)
            assert d["presence"]["cause"] == "silence"
    finally:
        gw.cleanup()


async def _state(api, device_id: str, state: str):
    d = (await api.get(f"/api/v1/devices/{device_id}")).json()
    return d if d["presence"]["state"] == state else None
