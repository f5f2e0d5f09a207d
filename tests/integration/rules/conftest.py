"""Fixtures of the rules tests: one real gateway (supervised Mosquitto over TLS, SQLite) with
short rule intervals, simulated ESP32s and raw device clients for exact readings."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from planty_broker.app import Gateway
from planty_broker.protocol import Status, encode
from tests.integration.commands.conftest import queue_settings, register
from tests.integration.core.conftest import ADMIN, RawDevice, eventually, running_gateway
from tests.integration.storage.conftest import (  # noqa: F401 - fixtures used by name
    pg_server,
    pg_url,
    store,
    store_factory,
)

RULE_SETTINGS: dict[str, Any] = {"timezone": "UTC", "silence_check_s": 0.5}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def rgw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """One gateway for the rules tests of this folder; each test uses its own devices."""
    settings = queue_settings(
        tmp_path_factory.mktemp("rgw"),
        rules=RULE_SETTINGS,
        commands={"max_on_seconds": 3600},  # the lamp threshold runs the lamp for an hour
    )
    async with running_gateway(settings) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="session")
async def rapi(rgw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=rgw.api_url, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as client:
        yield client


class Probe(RawDevice):
    """A raw device that declares sensors and actuators and sends exact readings."""

    seq = 0

    async def declare(
        self,
        sensors: tuple[str, ...] = ("temperature", "soil_moisture", "light"),
        actuators: tuple[str, ...] = ("pump", "lamp"),
    ) -> None:
        status = Status(online=True, sensors=sensors, actuators=actuators, interval_s=60)
        self.publish("status", encode(status), retain=True)

    def send(self, ts_ms: int | None = None, **values: float) -> None:
        body: dict[str, Any] = {"seq": self.seq, "readings": values}
        if ts_ms is not None:
            body["ts"] = ts_ms
        self.seq += 1
        self.publish("telemetry", json.dumps(body).encode())

    def commands(self, action: str | None = None) -> list[dict[str, Any]]:
        """Commands this device received (re-sends included), oldest first."""
        got = [json.loads(p) for t, p in self.received if t.endswith("/cmd")]
        return [c for c in got if action is None or c["action"] == action]

    def ack(self, command: dict[str, Any], ok: bool = True) -> None:
        body = {"id": command["id"], "ok": ok, "result": {"on": True}}
        self.publish("ack", json.dumps(body).encode())


@contextlib.asynccontextmanager
async def probe(
    api: httpx.AsyncClient, actuators: tuple[str, ...] = ("pump", "lamp")
) -> AsyncIterator[Probe]:
    """A registered raw device, connected, subscribed to its commands, status declared."""
    creds = await register(api, "rule")
    mqtt = {"host": creds.host, "port": creds.port, "ca_pem": creds.ca_pem}
    dev = Probe(creds.device_id, creds.token, mqtt)
    await dev.connect()
    dev.client.subscribe(f"{dev.base}/cmd", qos=1)
    await dev.declare(actuators=actuators)

    async def declared() -> bool:
        d = (await api.get(f"/api/v1/devices/{creds.device_id}")).json()
        return bool(d["actuators"])

    await eventually(declared, timeout=15)
    try:
        yield dev
    finally:
        await dev.close()


async def history(api: httpx.AsyncClient, rule_id: str, **params: Any) -> list[dict[str, Any]]:
    """A rule's history, oldest first."""
    r = await api.get(f"/api/v1/rules/{rule_id}/history", params=params)
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["events"]))


async def rule_commands(api: httpx.AsyncClient, device_id: str) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/devices/{device_id}/commands")
    assert r.status_code == 200, r.text
    return [c for c in reversed(r.json()["commands"]) if c["origin"] == "rule"]
