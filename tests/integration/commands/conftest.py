"""Fixtures of the command and event log tests: the store fixtures of tests/integration/storage
(memory, SQLite, PostgreSQL), a gateway with short timeouts, simulated devices."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from planty_broker.app import Gateway
from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import DeviceCredentials, DeviceProfile, Faults
from tests.integration.core.conftest import (
    ADMIN,
    eventually,
    gateway_settings,
    running_gateway,
    unique_id,
)
from tests.integration.storage.conftest import (  # noqa: F401 - fixtures used by name
    pg_server,
    pg_url,
    store,
    store_factory,
)

# Short timeouts so a failing device shows within seconds; a small queue for the 429 test.
QUEUE_SETTINGS: dict[str, dict[str, Any]] = {
    "commands": {
        "ack_timeout_s": 1.0,
        "max_attempts": 3,
        "max_queue_per_device": 5,
        "ping_interval_s": 1.0,
        "default_ttl_s": 600,
        "max_ttl_s": 3600,
    },
    "events": {"sse_keepalive_s": 1.0},
}


def queue_settings(data_dir: Path, **sections: dict[str, Any]) -> Any:
    merged = {k: dict(v) for k, v in QUEUE_SETTINGS.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return gateway_settings(data_dir, **merged)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def qgw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """One gateway for the command tests of this folder; each test uses its own devices."""
    async with running_gateway(queue_settings(tmp_path_factory.mktemp("qgw"))) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="session")
async def qapi(qgw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=qgw.api_url, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as client:
        yield client


def profile(faults: Faults | None = None, **kw: Any) -> DeviceProfile:
    """A quiet simulated ESP32 (telemetry once a minute) that reconnects quickly."""
    base = DeviceProfile(interval_s=60, reconnect_max_s=2.0, faults=faults or Faults())
    return dataclasses.replace(base, **kw)


async def register(api: httpx.AsyncClient, prefix: str = "cmd") -> DeviceCredentials:
    r = await api.post("/api/v1/devices", json={"id": unique_id(prefix)})
    assert r.status_code == 201, r.text
    body = r.json()
    m = body["mqtt"]
    return DeviceCredentials(body["id"], body["token"], m["host"], m["port"], m["tls"], m["ca_pem"])


async def online_in_api(api: httpx.AsyncClient, device_id: str, want: bool = True) -> None:
    async def check() -> bool:
        d = (await api.get(f"/api/v1/devices/{device_id}")).json()
        return bool(d["online"] == want and (not want or d["actuators"]))

    await eventually(check, timeout=15)


@contextlib.asynccontextmanager
async def sim_device(
    api: httpx.AsyncClient, prefix: str = "cmd", faults: Faults | None = None, **kw: Any
) -> AsyncIterator[SimDevice]:
    """A registered simulated device, online in the gateway's eyes; stopped at the end."""
    dev = SimDevice(await register(api, prefix), profile(faults, **kw))
    await dev.start()
    try:
        await dev.wait_online(15)
        await online_in_api(api, dev.device_id)
        yield dev
    finally:
        await dev.stop()
