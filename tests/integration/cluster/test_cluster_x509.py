"""X.509 device certificates on the cluster (issue 15), as on the supervised Mosquitto.

On the folder's shared set-up (conftest.py). A factory-fresh device claims a certificate
(no token) through the claim window opened on the worker; the lease holder issues it from
the cluster's CA. It logs in on every RabbitMQ node with the certificate alone (CN = its
id, no username, no password), its telemetry is stored, a password login as it is
refused, it cannot publish under another device's topic. Its certificate rotated through the
worker (as on Mosquitto: the new one delivered on its command topic, the old one retired
when it acks): it goes on with the new one and no node takes the old one (the CRL). Revoked
through the worker: its live session is cut, and no node lets it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import ssl
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from cryptography import x509

from planty_broker.simulator.claim import ClaimCredentials, FactoryIdentity, claim
from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import DeviceProfile
from planty_broker.simulator.stats import DeviceState
from tests.integration.cluster.test_shared_access import api, ok
from tests.integration.identity.conftest import try_login
from tests.integration.mqttserver.clients import TestClient, cert_tls, device_tls

pytestmark = pytest.mark.integration


async def _login(
    port: int, device_id: str, tls: Any, password: str | None = None
) -> TestClient | None:
    client = TestClient(device_id, device_id if password else None, password)
    try:
        await client.connect("localhost", port, tls)
    except Exception:
        await client.close()
        return None
    await asyncio.sleep(0.2)  # a refused CONNACK may close right after the connect returns
    if client.disconnected.is_set():
        await client.close()
        return None
    return client


async def _cert_login(port: int, device_id: str, tls: ssl.SSLContext) -> str:
    """One login with a certificate alone, by hand (nothing waits on a refused handshake):
    "accepted", "refused: CONNACK <code>" or "tls: <why>"; client id = username, as a device
    does."""
    return await try_login("localhost", port, tls, None, None, client_id=device_id)


async def _stored(on: httpx.AsyncClient, device_id: str, want: int) -> int:
    """The device's stored readings once there are `want` (or after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        r = await on.get(f"/devices/{device_id}/telemetry")
        # 404: claimed on the lease holder, not yet re-read by this instance (every 2 s)
        n = int(ok(r)["count"]) if r.status_code != 404 else 0
        if n >= want or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.3)


async def _until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def _state(on: httpx.AsyncClient, device_id: str, credential_id: str) -> str:
    body = ok(await on.get(f"/devices/{device_id}/credentials"))
    return next(str(c["state"]) for c in body["credentials"] if c["id"] == credential_id)


async def _revoked(port: int, device_id: str, tls: ssl.SSLContext) -> str:
    return "yes" if "REVOKED" in (await _cert_login(port, device_id, tls)).upper() else "no"


async def _until_async(get: Any, want: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (got := await get()) != want:
        assert time.monotonic() < deadline, f"{got}, not {want}"
        await asyncio.sleep(0.2)


def _serial(cert_pem: str) -> int:
    return x509.load_pem_x509_certificate(cert_pem.encode()).serial_number


def _reading(seq: int) -> bytes:
    return json.dumps({"seq": seq, "readings": {"temperature": 20.0 + seq}}).encode()


@pytest.mark.timeout(300)
async def test_a_certificate_device_logs_in_on_any_node_until_revoked(
    cluster: tuple[ModuleType, Any],
) -> None:
    cl, c = cluster
    holder = await cl.leader(c.gateways)
    (worker,) = [g for g in c.gateways if g is not holder]
    ports = c.spec.mqtts_ports()
    ca = Path(c.spec.ca_cert).read_text()
    async with api(holder, c.token) as on_holder, api(worker, c.token) as on_worker:
        other = f"x5-other-{uuid.uuid4().hex[:6]}"
        ok(await on_worker.post("/devices", json={"id": other}))
        secret = ok(await on_holder.get("/provisioning/claim-credential"))
        m = secret["mqtt"]
        firmware = ClaimCredentials(
            m["host"], m["port"], m["ca_pem"], secret["password"], secret["slots"],
            first_slot=secret["first_slot"],
        )  # fmt: skip
        ok(await on_worker.post("/provisioning/window", json={"duration_s": 120}))
        try:
            serial = f"SN-{uuid.uuid4().hex[:10].upper()}"
            creds = await claim(FactoryIdentity(firmware, serial, type="x509"), give_up_s=60)
        finally:
            ok(await on_worker.delete("/provisioning/window"))
        device = creds.device_id
        assert creds.cert_pem and creds.key_pem and not creds.token
        assert creds.port in ports  # the same listeners as tokens
        tls = cert_tls(ca, creds.cert_pem, creds.key_pem)

        # the certificate alone logs in on every node; what it publishes is stored
        for seq, port in enumerate(ports, 1):
            session = await _login(port, device, tls)
            assert session is not None, f"the certificate was refused on node port {port}"
            session.publish(f"planty/v1/devices/{device}/telemetry", _reading(seq))
            assert await _stored(on_worker, device, seq) == seq
            await session.close()

        # nobody logs in as it with a password (its user has none)
        assert await _login(ports[0], device, device_tls(ca), password="guess") is None

        # confined: another device's topic is refused (RabbitMQ closes the connection)
        session = await _login(ports[-1], device, tls)
        assert session is not None
        session.publish(f"planty/v1/devices/{other}/telemetry", _reading(1))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.disconnected.wait(), 5)
        await session.close()
        session = await _login(ports[-1], device, tls)
        assert session is not None
        session.publish(f"planty/v1/devices/{device}/telemetry", _reading(len(ports) + 1))
        assert await _stored(on_worker, device, len(ports) + 1) == len(ports) + 1
        assert ok(await on_worker.get(f"/devices/{other}/telemetry"))["count"] == 0
        await session.close()

        # rotated to a new certificate (through the worker): the device acks it, goes on
        # with it, and no node takes the old one
        alternates = tuple(("localhost", p) for p in ports if p != creds.port)
        profile = DeviceProfile(interval_s=0.5, keepalive_s=5, reconnect_min_s=0.2,
                                reconnect_max_s=1.0, ota=False)  # fmt: skip
        sim = SimDevice(dataclasses.replace(creds, alternates=alternates), profile)
        await sim.start()
        try:
            await sim.wait_online(20)
            rotated = ok(await on_worker.post(f"/devices/{device}/rotate", json={"type": "x509"}))
            await _until(lambda: sim.stats.credential_switches == 1, "no switch", 30)
            await sim.wait_online(20)
            assert sim.credential_id == rotated["credential"]["id"]
            new = sim.credentials
            assert new.cert_pem and new.cert_pem != creds.cert_pem and new.key_pem
            # the switch is the lease holder's, when it gets the device's ack (which the
            # device sends before it logs in with the new one): the CRL refuses the old
            # certificate from then on, on every node (its user is still there)
            await _until_async(lambda: _revoked(ports[0], device, tls), "yes")
            for port in ports:
                refused = await _cert_login(port, device, tls)
                assert "REVOKED" in refused.upper(), f"node port {port}: {refused}"
            assert await _state(on_worker, device, rotated["replaces"]) == "retired"
            acked = sim.stats.telemetry_acked
            await _until(lambda: sim.stats.telemetry_acked > acked, "no telemetry after it")

            # revoked (through the worker): the live session ends, no node lets it in again
            ok(await on_worker.post(f"/devices/{device}/revoke"))
            await _until(lambda: sim.state is not DeviceState.ONLINE, "still online", 5)
        finally:
            await sim.stop()
        new_tls = cert_tls(ca, new.cert_pem, new.key_pem)
        for port in ports:
            refused = await _cert_login(port, device, new_tls)
            assert refused != "accepted", f"node port {port} let it in"
        (crl_file,) = Path(c.spec.crl_dir).glob("*.r0")
        crl = x509.load_pem_x509_crl(crl_file.read_bytes())
        for pem in (creds.cert_pem, new.cert_pem):
            assert crl.get_revoked_certificate_by_serial_number(_serial(pem)) is not None
