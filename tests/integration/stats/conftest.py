"""Fixtures of the statistics tests: the core gateway fixtures, plus an online raw device."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.integration.core.conftest import (  # noqa: F401 - fixtures re-exported
    ADMIN,
    RawDevice,
    api,
    eventually,
    gateway,
    unique_id,
)

STATUS: dict[str, Any] = {
    "online": True,
    "fw": "2.1.0",
    "boot": 3,
    "sensors": ["temperature", "soil_moisture"],
    "actuators": ["pump"],
    "interval_s": 1,
    "rssi": -58,
    "heap": 81234,
    "uptime_s": 42,
}


async def register(client: httpx.AsyncClient, prefix: str = "st") -> dict[str, Any]:
    r = await client.post("/api/v1/devices", json={"id": unique_id(prefix)})
    assert r.status_code == 201, r.text
    return r.json()


async def connect(creds: dict[str, Any], status: dict[str, Any] | None = None) -> RawDevice:
    dev = RawDevice(creds["id"], creds["token"], creds["mqtt"])
    await dev.connect()
    dev.publish("status", json.dumps(status or STATUS).encode(), retain=True)
    return dev


async def stats_of(client: httpx.AsyncClient, device_id: str, window: str = "1h") -> dict[str, Any]:
    r = await client.get(f"/api/v1/devices/{device_id}/stats", params={"window": window})
    assert r.status_code == 200, r.text
    return r.json()
