"""X.509 device certificates on the cluster (issue 15), as on the supervised Mosquitto.

On the folder's shared set-up (conftest.py). A factory-fresh device claims a certificate
(no token) through the claim window opened on the worker; the lease holder issues it from
the cluster's CA. It logs in on every RabbitMQ node with the certificate alone (CN = its
id, no username, no password), its telemetry is stored, a password login as it is
refused, it cannot publish under another device's topic. Revoked through the worker: its
live session is cut, its certificate is on the CRL the nodes read, and no node lets it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from cryptography import x509

from planty_broker.simulator.claim import ClaimCredentials, FactoryIdentity, claim
from tests.integration.cluster.test_shared_access import api, ok
from tests.integration.mqttserver.clients import TestClient, cert_tls, device_tls

pytestmark = pytest.mark.integration


async def _login(
    port: int, ca: str, device_id: str, tls: Any, password: str | None = None
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


async def _stored(on: httpx.AsyncClient, device_id: str, want: int) -> int:
    """The device's stored readings once there are `want` (or after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        n = int(ok(await on.get(f"/devices/{device_id}/telemetry"))["count"])
        if n >= want or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.3)


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
            session = await _login(port, ca, device, tls)
            assert session is not None, f"the certificate was refused on node port {port}"
            session.publish(f"planty/v1/devices/{device}/telemetry", _reading(seq))
            assert await _stored(on_worker, device, seq) == seq
            await session.close()

        # nobody logs in as it with a password (its user has none)
        assert await _login(ports[0], ca, device, device_tls(ca), password="guess") is None

        # confined: another device's topic is refused (RabbitMQ closes the connection)
        session = await _login(ports[-1], ca, device, tls)
        assert session is not None
        session.publish(f"planty/v1/devices/{other}/telemetry", _reading(1))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.disconnected.wait(), 5)
        await session.close()
        session = await _login(ports[-1], ca, device, tls)
        assert session is not None
        session.publish(f"planty/v1/devices/{device}/telemetry", _reading(len(ports) + 1))
        assert await _stored(on_worker, device, len(ports) + 1) == len(ports) + 1
        assert ok(await on_worker.get(f"/devices/{other}/telemetry"))["count"] == 0

        # revoked (through the worker): the live session ends, no node lets it in again
        ok(await on_worker.post(f"/devices/{device}/revoke"))
        await asyncio.wait_for(session.disconnected.wait(), 5)
        await session.close()
        for port in ports:
            assert await _login(port, ca, device, tls) is None, f"node port {port} let it in"
        number = x509.load_pem_x509_certificate(creds.cert_pem.encode()).serial_number
        (crl_file,) = Path(c.spec.crl_dir).glob("*.r0")
        crl = x509.load_pem_x509_crl(crl_file.read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(number) is not None
