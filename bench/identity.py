"""Identity timings on a real gateway (supervised Mosquitto, TLS, SQLite): prints numbers.

- revoke: API call -> the device's live session closed (token and certificate devices)
- rotate: API call -> the device logged in with its new token
- claim: a factory-fresh device's claim round trip (connect, request, reply)

Run: .venv/bin/python bench/identity.py [--rounds 10] [--devices 100]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from measure import free_port

from planty_broker.app import Gateway
from planty_broker.config import load_settings
from planty_broker.simulator.claim import ClaimCredentials, FactoryIdentity, claim
from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import DeviceCredentials, DeviceProfile

ADMIN = "bench-admin-" + uuid.uuid4().hex
PROFILE = DeviceProfile(interval_s=1.0, keepalive_s=10, reconnect_min_s=0.05, reconnect_max_s=0.5)


def summary(name: str, values_ms: list[float]) -> None:
    values_ms.sort()
    p95 = values_ms[max(0, round(0.95 * len(values_ms)) - 1)]
    print(
        f"{name:<34} n={len(values_ms):<4} p50={statistics.median(values_ms):7.1f} ms  "
        f"p95={p95:7.1f} ms  max={values_ms[-1]:7.1f} ms"
    )


async def new_device(api: httpx.AsyncClient, cert: bool = False) -> DeviceCredentials:
    created = (await api.post("/devices", json={"id": f"b-{uuid.uuid4().hex[:10]}"})).json()
    m = created["mqtt"]
    creds = DeviceCredentials(
        created["id"], created["token"], m["host"], m["port"], True, m["ca_pem"]
    )
    if cert:
        issued = (await api.post(f"/devices/{created['id']}/credentials", json={})).json()
        creds = dataclasses.replace(
            creds,
            token="",
            port=issued["mqtt"]["port"],
            cert_pem=issued["cert_pem"],
            key_pem=issued["key_pem"],
        )
    return creds


async def bench_revoke(api: httpx.AsyncClient, rounds: int, cert: bool) -> list[float]:
    out = []
    for _ in range(rounds):
        dev = SimDevice(await new_device(api, cert), PROFILE)
        await dev.start()
        await dev.wait_online(10)
        link = dev._link
        assert link is not None
        t0 = time.perf_counter()
        await api.post(f"/devices/{dev.device_id}/revoke")
        await asyncio.wait_for(link.lost.wait(), 5)
        out.append((time.perf_counter() - t0) * 1000)
        await dev.kill()
    return out


async def bench_rotate(api: httpx.AsyncClient, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        dev = SimDevice(await new_device(api), PROFILE)
        await dev.start()
        await dev.wait_online(10)
        t0 = time.perf_counter()
        await api.post(f"/devices/{dev.device_id}/rotate", json={})
        while dev.stats.credential_switches < 1:
            await asyncio.sleep(0.002)
        out.append((time.perf_counter() - t0) * 1000)
        await dev.stop()
    return out


async def bench_claim(api: httpx.AsyncClient, rounds: int) -> list[float]:
    await api.post("/provisioning/window", json={"duration_s": 600})
    data = (await api.get("/provisioning/claim-credential")).json()
    m = data["mqtt"]
    creds = ClaimCredentials(m["host"], m["port"], m["ca_pem"], data["password"], data["slots"])
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await claim(FactoryIdentity(creds, f"SN-{uuid.uuid4().hex[:12]}"), 30)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def main(rounds: int, background: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="planty-bench-identity-"))
    settings = load_settings(
        env={},
        overrides={
            "gateway": {"data_dir": str(data_dir), "admin_token": ADMIN},
            "api": {"port": free_port()},
            "mqtt": {
                "port": free_port(),
                "internal_port": free_port(),
                "x509_port": free_port(),
                "public_host": "localhost",
            },
            "log": {"level": "warning"},
        },
    )
    async with (
        Gateway(settings, announce=lambda _l: None) as gw,
        httpx.AsyncClient(
            base_url=f"{gw.api_url}/api/v1",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
        ) as api,
    ):
        fleet = [SimDevice(await new_device(api), PROFILE) for _ in range(background)]
        for d in fleet:
            await d.start()
        for d in fleet:
            await d.wait_online(30)
        print(f"{background} other devices online; {rounds} rounds each")
        summary("revoke -> token session closed", await bench_revoke(api, rounds, False))
        summary("revoke -> cert session closed", await bench_revoke(api, rounds, True))
        summary("rotate -> logged in with new token", await bench_rotate(api, rounds))
        summary("claim round trip (factory device)", await bench_claim(api, rounds))
        for d in fleet:
            await d.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)  # refused reconnects of revoked devices: expected
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--devices", type=int, default=100, help="other devices online")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.devices))
