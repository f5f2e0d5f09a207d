"""Long-term history through the real gateway: readings over TLS and readings from days ago,
rolled up, the old raw ones deleted, and the hourly API still answering from the rollups."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from planty_broker.app import Gateway
from planty_broker.domain.history import DAY_MS, HOUR_MS, RetentionPolicy
from planty_broker.domain.models import Reading
from planty_broker.services.history import HistoryService
from tests.integration.core.conftest import eventually
from tests.integration.core.test_devices_e2e import online_device

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_old_raw_readings_go_and_the_hourly_api_answers_from_rollups(
    api: httpx.AsyncClient, gateway: Gateway
) -> None:
    svc = gateway.services
    assert svc is not None
    dev = await online_device(api, "hist")
    try:
        for seq in range(3):
            dev.publish("telemetry", json.dumps({"seq": seq, "readings": {"t": 20.0 + seq}}).encode())
        url = f"/api/v1/devices/{dev.device_id}/telemetry"
        await eventually(lambda: _count(api, url, 3))
    finally:
        await dev.close()
    now = time.time_ns() // 1_000_000
    # ten days of readings, one an hour, as if the device had been here all along
    old = [
        Reading(dev.device_id, i, t, t, {"t": float(i % 24), "m": 0.5})
        for i, t in enumerate(range(now - 10 * DAY_MS, now - DAY_MS, HOUR_MS))
    ]
    await svc.store.append_readings(old)
    # raw readings kept 5 days here; no lag, so the live ones are rolled up at once
    policy = RetentionPolicy(5 * DAY_MS, 400 * DAY_MS, DAY_MS, rollup_lag_ms=0)
    history = HistoryService(svc.store, policy)  # type: ignore[arg-type]
    await history.run_once()
    raw = (await api.get(url, params={"since": now - 11 * DAY_MS, "limit": 10_000})).json()
    kept = [r for r in old if r.ts_ms >= now - 5 * DAY_MS]
    assert len(kept) + 3 - 1 <= raw["count"] <= len(kept) + 3  # the cut moved a few ms since
    oldest = min(int(r["seq"]) for r in raw["readings"] if "m" in r["readings"])
    assert oldest >= old.index(kept[0])  # every raw reading older than 5 days is gone
    hourly = await api.get(url + "/hourly", params={"since": now - 11 * DAY_MS})
    assert hourly.status_code == 200, hourly.text
    hours = hourly.json()["hours"]
    assert len(hours) >= len(old)  # every old hour, and the hour of the live readings
    first = hours[0]
    assert first["hour_ms"] == (now - 10 * DAY_MS) // HOUR_MS * HOUR_MS
    assert first["readings"]["m"] == {"count": 1, "min": 0.5, "max": 0.5, "avg": 0.5, "last": 0.5}
    live = [h for h in hours if "t" in h["readings"] and h["readings"]["t"]["max"] == 22.0]
    assert live and live[-1]["readings"]["t"]["count"] >= 3
    bad = await api.get(url + "/hourly", params={"since": "yesterday"})
    assert bad.status_code == 422


async def _count(api: httpx.AsyncClient, url: str, n: int) -> bool:
    return (await api.get(url)).json()["count"] >= n
