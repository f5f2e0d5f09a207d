"""`planty simulate` takes updates: a rollout shown end to end on simulated devices.

The gateway runs on PostgreSQL here (the device-library rollout tests run on SQLite), so
the rollout engine is exercised on both stores against a real Mosquitto over TLS.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio

from planty_broker.simulator.fleet import Fleet
from planty_broker.simulator.profile import DeviceCredentials, DeviceProfile, Faults
from tests.integration.core.conftest import (
    ADMIN,
    eventually,
    gateway_settings,
    running_gateway,
    unique_id,
)

pytestmark = pytest.mark.integration

FAST = DeviceProfile(interval_s=60, reconnect_min_s=0.1, reconnect_max_s=0.5, boot_s=0.2)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pg_gateway(
    tmp_path_factory: pytest.TempPathFactory, pg_server: Any
) -> AsyncIterator[Any]:
    settings = gateway_settings(
        tmp_path_factory.mktemp("fwpg"),
        store={"url": pg_server.create()},
        firmware={"ack_timeout_s": 1.0, "max_boots": 2},
    )
    async with running_gateway(settings) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="session")
async def api(pg_gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=pg_gateway.api_url + "/api/v1",
        timeout=30,
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as client:
        yield client


async def _fleet(api: httpx.AsyncClient, n: int, profile: DeviceProfile) -> tuple[Fleet, list[str]]:
    creds = []
    for _ in range(n):
        r = await api.post("/devices", json={"id": unique_id("sim")})
        assert r.status_code == 201, r.text
        b = r.json()
        m = b["mqtt"]
        creds.append(
            DeviceCredentials(b["id"], b["token"], m["host"], m["port"], m["tls"], m["ca_pem"])
        )
    return Fleet(creds, profile), [c.device_id for c in creds]


async def _release(api: httpx.AsyncClient, base: str) -> str:
    """A new release (a unique version: a rerun must not meet the first run's)."""
    version = f"{base}-{uuid.uuid4().hex[:6]}"
    files = {"main.py": f"VERSION = '{version}'\n".encode(), "blob.bin": bytes(range(256)) * 20}
    r = await api.post(
        "/firmware",
        json={
            "version": version,
            "files": [
                {"name": n, "content_b64": base64.b64encode(b).decode()} for n, b in files.items()
            ],
        },
    )
    assert r.status_code == 201, r.text
    return version


async def _until(api: httpx.AsyncClient, rid: int, done: Callable[[dict[str, Any]], bool]) -> Any:
    async def check() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/rollouts/{rid}")).json()
        return body if done(body) else None

    return await eventually(check, timeout=120)


async def test_twenty_simulated_devices_take_a_rollout_on_postgresql(
    api: httpx.AsyncClient,
) -> None:
    fleet, ids = await _fleet(api, 20, FAST)
    async with fleet:
        version = await _release(api, "5.0.0")
        r = await api.post(f"/firmware/{version}/rollouts", json={"devices": ids, "first_wave": 2})
        assert r.status_code == 201, r.text
        done = await _until(api, r.json()["id"], lambda b: b["state"] == "done")
        assert done["counts"] == {"applied": 20}
        assert all(fleet[d].fw == version for d in ids)
        assert fleet.stats().total.updates_applied == 20
        assert "updates 20 applied, 0 rolled back" in fleet.stats().line()


async def test_simulated_crashes_halt_the_rollout_and_admin_actions_are_logged(
    api: httpx.AsyncClient,
) -> None:
    crashing = dataclasses.replace(FAST, faults=Faults(update_crash_rate=1.0))
    fleet, ids = await _fleet(api, 6, crashing)
    async with fleet:
        version = await _release(api, "5.1.0")
        r = await api.post(f"/firmware/{version}/rollouts", json={"devices": ids, "first_wave": 2})
        rid = r.json()["id"]
        halted = await _until(
            api, rid, lambda b: b["state"] == "halted" and b["counts"].get("rolled_back") == 2
        )
        assert halted["counts"] == {"rolled_back": 2, "pending": 4}
        assert all(
            t["reason"] == "not online after 2 boots" for t in halted["targets"] if t["wave"] == 1
        )
        r = await api.post(f"/rollouts/{rid}/resume")  # the admin decides to go on anyway
        assert r.status_code == 200 and r.json()["state"] == "running"
        again = await _until(api, rid, lambda b: b["state"] == "halted" and b["wave"] == 2)
        assert again["reason"].startswith("wave 2: ")
        r = await api.post(f"/rollouts/{rid}/abort")
        assert r.json()["state"] == "aborted"
        assert all(fleet[d].fw == FAST.fw for d in ids)  # nobody runs the bad release
    r = await api.get("/events", params={"types": "firmware", "limit": 1000})
    actions = [
        e["data"]["action"]
        for e in r.json()["events"]
        if e["data"].get("rollout") == rid and "action" in e["data"]
    ]
    assert actions[:2] == ["rollout_started", "rollout_halted"]
    assert "resume" in actions and actions[-1] == "abort"
    r = await api.get(f"/devices/{ids[0]}/firmware")
    assert r.json()["supports_updates"] is True
    assert r.json()["updates"][0]["rollout"] == rid
