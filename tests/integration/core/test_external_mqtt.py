"""The gateway on an external MQTT server (`mqtt.url`): the unmanaged device authority.

Nothing is supervised; telemetry flows through that server; everything that only a
managed server can do answers with one line saying to manage credentials there.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311

from planty_broker.mqttserver.unmanaged import UnmanagedAuthority
from tests.integration.core.conftest import ADMIN, gateway_settings, running_gateway
from tests.integration.simulator.conftest import MosquittoProcess
from tests.integration.stats.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_an_external_server_carries_telemetry_and_credentials_stay_its_business(
    tmp_path: Path,
) -> None:
    external = MosquittoProcess(tmp_path)
    external.start()
    try:
        settings = gateway_settings(
            tmp_path / "gw", mqtt={"url": f"mqtt://127.0.0.1:{external.port}"}
        )
        async with (
            running_gateway(settings) as gw,
            httpx.AsyncClient(
                base_url=gw.api_url, headers={"Authorization": f"Bearer {ADMIN}"}
            ) as api,
        ):
            assert gw.supervisor is None and isinstance(gw.authority, UnmanagedAuthority)
            assert not (tmp_path / "gw" / "mosquitto").exists()
            r = await api.post("/api/v1/devices", json={"id": "ext-1"})
            assert r.status_code == 201, r.text
            assert r.json()["mqtt"]["port"] == external.port

            device = Client(f"ext-{uuid.uuid4().hex[:6]}")
            await device.connect("127.0.0.1", external.port, version=MQTTv311)
            try:
                body = json.dumps({"seq": 0, "readings": {"light": 7}}).encode()
                device.publish("planty/v1/devices/ext-1/telemetry", body, qos=1)

                async def stored() -> list | None:
                    got = await api.get("/api/v1/devices/ext-1/telemetry")
                    found = got.json()["readings"]
                    return found or None

                readings = await eventually(stored)
                assert readings[0]["readings"] == {"light": 7}
            finally:
                await device.disconnect()

            revoked = await api.post("/api/v1/devices/ext-1/revoke")
            assert revoked.status_code == 409 and "mqtt.url" in revoked.json()["error"]["message"]
            window = await api.post("/api/v1/provisioning/window", json={"duration_s": 60})
            assert window.status_code == 409, window.text
            assert "mqtt.url" in window.json()["error"]["message"]
            metrics = (await api.get("/metrics")).text
            assert "planty_mqtt_connected 1.0" in metrics
            assert "planty_mosquitto_restarts" not in metrics
    finally:
        external.stop()
