"""Statistics and presence on the cluster are right (issue 15): every message is counted
once, whichever instance stored it, and either instance answers with the same figures.

On the folder's shared set-up (conftest.py: RabbitMQ, a private PostgreSQL, 2 gateway
instances). Devices stream QoS 1 telemetry over TLS; both instances consume it
competitively, the lease holder counts the copies on its control queue. The lease holder
is then stopped (SIGTERM): the next one starts from the counters it saved and goes on.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from dataclasses import replace
from types import ModuleType
from typing import Any

import httpx
import pytest

from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import DeviceProfile
from planty_broker.simulator.provision import provision_devices
from tests.integration.cluster.conftest import restart

pytestmark = pytest.mark.integration


def api(gw: Any, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gw.url + "/api/v1", headers={"authorization": f"Bearer {token}"}, timeout=30
    )


async def _counts(client: httpx.AsyncClient, ids: list[str]) -> dict[str, tuple[int, str]]:
    """Readings counted and presence, per device (a silent device may already be `late`:
    online it is, either way)."""
    out = {}
    for device_id in ids:
        r = await client.get(f"/devices/{device_id}/stats", params={"window": "1h"})
        assert r.status_code == 200, r.text
        d = (await client.get(f"/devices/{device_id}")).json()
        out[device_id] = (r.json()["readings"], "online" if d["online"] else "offline")
    return out


async def _until(
    clients: list[httpx.AsyncClient], ids: list[str], want: dict[str, tuple[int, str]]
) -> list[dict[str, tuple[int, str]]]:
    """What each instance answers, once all agree with `want` (or after 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        got = [await _counts(c, ids) for c in clients]
        if all(g == want for g in got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.5)


async def _stream(fleet: list[SimDevice], readings: int) -> dict[str, int]:
    """Each device sends at least `readings` more; returns what each got PUBACKed in all."""
    start = {d.device_id: d.stats.telemetry_acked for d in fleet}
    for d in fleet:
        d.resume()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(
        d.stats.telemetry_acked - start[d.device_id] < readings for d in fleet
    ):
        await asyncio.sleep(0.2)
    for d in fleet:
        d.go_silent()
    await asyncio.gather(*(d.wait_acked(20) for d in fleet))
    return {d.device_id: d.stats.telemetry_acked for d in fleet}


async def fleet_of(c: Any, via: Any, prefix: str, n: int = 4) -> list[SimDevice]:
    """`n` devices registered through instance `via`, spread over the nodes' TLS ports (each
    with the others as alternates), a reading every 0.1 s once started; not started yet."""
    ids = [f"{prefix}-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
    creds = await provision_devices(via.url + "/api/v1", c.token, ids, concurrency=4)
    ports = c.spec.mqtts_ports()
    alternates = tuple(("localhost", p) for p in ports)
    creds = [
        replace(cr, host="localhost", port=ports[i % len(ports)], alternates=alternates)
        for i, cr in enumerate(creds)
    ]
    profile = DeviceProfile(
        interval_s=0.1, reconnect_min_s=0.5, reconnect_max_s=4.0, keepalive_s=10, ota=False
    )
    rng = random.Random(15)
    return [SimDevice(cr, profile, seed=rng.randrange(1 << 30)) for cr in creds]


@pytest.mark.timeout(400)
async def test_every_reading_is_counted_once_and_both_instances_say_so(
    cluster: tuple[ModuleType, Any],
) -> None:
    cl, c = cluster
    holder = await cl.leader(c.gateways)
    fleet = await fleet_of(c, holder, "st")
    ids = [d.device_id for d in fleet]
    for d in fleet:
        await d.start()
    try:
        acked = await _stream(fleet, 25)
        async with api(c.gateways[0], c.token) as a, api(c.gateways[1], c.token) as b:
            want = {i: (acked[i], "online") for i in ids}
            on_a, on_b = await _until([a, b], ids, want)
            assert on_a == want, (on_a, want)  # not half (each instance stored a share)
            assert on_b == want, (on_b, want)  # nor twice (the copy and the stored one)
        # the lease holder stops cleanly: its counters are saved, the next one goes on
        holder = await cl.leader(c.gateways)
        (other,) = [g for g in c.gateways if g is not holder]
        cl.gateway_kill(holder, signal.SIGTERM)
        try:
            assert await cl.leader([other], timeout_s=60) is other
            acked = await _stream(fleet, 10)
            async with api(other, c.token) as survivor:
                want = {i: (acked[i], "online") for i in ids}
                (got,) = await _until([survivor], ids, want)
                assert got == want, (got, want)
        finally:
            await restart(cl, c, holder)
    finally:
        for d in fleet:
            await d.stop()
