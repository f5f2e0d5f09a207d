"""Bounds pushed past on a real gateway: the eviction or the count shows, not growth."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from planty_broker.app import Gateway
from tests.integration.core.conftest import ADMIN, eventually, gateway_settings, running_gateway
from tests.integration.core.test_devices_e2e import online_device

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

MAX_CONNECTIONS = 6


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tight(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    settings = gateway_settings(
        tmp_path_factory.mktemp("bounds"),
        api={"max_connections": MAX_CONNECTIONS},
        events={"error_every_s": 60},
    )
    async with running_gateway(settings) as gw:
        yield gw


def client(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gw.api_url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"}
    )


async def test_a_junk_flood_is_counted_but_coalesced_in_the_event_log(tight: Gateway) -> None:
    async with client(tight) as api:
        dev = await online_device(api, "junk")
        try:
            for i in range(2_000):
                dev.publish("telemetry", b"{not json" + str(i).encode())
            good = {"seq": 1, "readings": {"t": 1.0}}
            dev.publish("telemetry", json.dumps(good).encode())
            url = f"/api/v1/devices/{dev.device_id}"
            await eventually(lambda: _errors(api, url, 2_000), timeout=30)  # each one counted
        finally:
            await dev.close()
        events = await api.get(
            "/api/v1/events", params={"types": "device_error", "limit": 10_000}
        )
        mine = [e for e in events.json()["events"] if e["device_id"] == dev.device_id]
        assert len(mine) == 1 and mine[0]["data"]["count"] == 1  # the rest wait in the window
        metrics = (await api.get("/metrics")).text
        assert _metric(metrics, "planty_device_error_windows") >= 1
        seen = _metric(metrics, 'planty_device_error_events_total{outcome="seen"}')
        written = _metric(metrics, 'planty_device_error_events_total{outcome="events"}')
        assert seen >= 2_000 and written <= 5
        assert tight.services is not None and tight.services.events is not None
        # the interval ends (moved forward): one event says how many more there were
        svc_events = tight.services.events
        svc_events.errors.tick(2**62)
        await eventually(lambda: _window_flushed(api, dev.device_id), timeout=10)


async def test_past_max_connections_new_requests_get_503_at_once(tight: Gateway) -> None:
    streams: list[asyncio.Task[None]] = []
    opened = asyncio.Semaphore(0)

    async def hold() -> None:
        async with client(tight) as c, c.stream("GET", "/api/v1/events/stream") as r:
            assert r.status_code == 200
            opened.release()
            async for _ in r.aiter_lines():
                pass

    try:  # uvicorn counts the arriving connection too: max - 1 can stay open
        for _ in range(MAX_CONNECTIONS - 1):
            streams.append(asyncio.create_task(hold()))
        for _ in range(MAX_CONNECTIONS - 1):
            await asyncio.wait_for(opened.acquire(), 10)
        async with client(tight) as c:
            r = await c.get("/api/v1/devices")
        assert r.status_code == 503
    finally:
        for t in streams:
            t.cancel()
        for t in streams:
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await t
    async with client(tight) as c:  # the streams gone, the gateway serves again
        await eventually(lambda: _ok(c), timeout=10)


async def _ok(c: httpx.AsyncClient) -> bool:
    return (await c.get("/api/v1/devices")).status_code == 200


async def _errors(api: httpx.AsyncClient, url: str, n: int) -> bool:
    return (await api.get(url)).json()["counts"]["errors"] >= n


async def _window_flushed(api: httpx.AsyncClient, device_id: str) -> bool:
    r = await api.get("/api/v1/events", params={"types": "device_error", "limit": 10_000})
    counts = [e["data"]["count"] for e in r.json()["events"] if e["device_id"] == device_id]
    return counts == [1, 1_999]


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")
