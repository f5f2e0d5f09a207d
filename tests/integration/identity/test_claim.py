"""Provisioning by claim over real Mosquitto and TLS: factory-fresh devices get their own
credential only while the window is open, and the claim credential can do nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import httpx
import pytest
from gmqtt import Client
from tests.integration.core.conftest import eventually
from tests.integration.identity.conftest import FAST, claim_credentials, tls, try_login

from planty_broker.app import Gateway
from planty_broker.protocol import (
    ClaimRequest,
    claim_slot_name,
    decode_claim_reply,
    encode_provisioning,
    provision_topic,
)
from planty_broker.simulator.claim import ClaimError, FactoryDevice, FactoryIdentity, claim

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def serial() -> str:
    return f"SN-{uuid.uuid4().hex[:10].upper()}"


async def stored_seqs(admin: httpx.AsyncClient, device_id: str) -> list[int]:
    r = await admin.get(f"/devices/{device_id}/telemetry")
    return [x["seq"] for x in r.json()["readings"]]


async def test_factory_fresh_device_claims_its_token_and_sends_telemetry(
    gw: Gateway, admin: httpx.AsyncClient
) -> None:
    r = await admin.post("/provisioning/window", json={"duration_s": 60})
    assert r.json()["window_open"] is True
    creds = await claim_credentials(admin)
    sn = serial()
    async with FactoryDevice(FactoryIdentity(creds, sn), FAST) as factory:
        claimed = await factory.wait_claimed(20)
        assert claimed.device_id == sn.lower()  # the id comes from the serial
        assert claimed.token and claimed.port == creds.port
        assert factory.device is not None
        await factory.device.wait_online(10)
        await eventually(lambda: _has_readings(admin, claimed.device_id), timeout=10)
    r = await admin.get(f"/devices/{claimed.device_id}/credentials")
    body = r.json()
    (cred,) = body["credentials"]
    assert (cred["type"], cred["state"], cred["origin"]) == ("token", "active", "claim")
    events = [e["event"] for e in body["events"]]
    assert "claimed" in events and "issued" in events
    await eventually(lambda: _first_used(admin, claimed.device_id), timeout=5)


async def _has_readings(admin: httpx.AsyncClient, device_id: str) -> bool:
    return len(await stored_seqs(admin, device_id)) >= 3


async def _first_used(admin: httpx.AsyncClient, device_id: str) -> bool:
    r = await admin.get(f"/devices/{device_id}/credentials")
    return r.json()["credentials"][0]["first_used_at"] is not None


async def test_factory_fresh_device_can_claim_a_certificate(
    gw: Gateway, admin: httpx.AsyncClient
) -> None:
    await admin.post("/provisioning/window", json={"duration_s": 60})
    creds = await claim_credentials(admin)
    identity = FactoryIdentity(
        creds, serial(), type="x509", device_id=f"x509-{uuid.uuid4().hex[:6]}"
    )
    async with FactoryDevice(identity, FAST) as factory:
        claimed = await factory.wait_claimed(20)
        assert claimed.cert_pem and claimed.key_pem and not claimed.token
        assert claimed.port == gw.supervisor.layout.x509_port
        assert factory.device is not None
        await factory.device.wait_online(10)
        await eventually(lambda: _has_readings(admin, claimed.device_id), timeout=10)
    r = await admin.get(f"/devices/{claimed.device_id}/credentials")
    (cred,) = r.json()["credentials"]
    assert (cred["type"], cred["state"]) == ("x509", "active")


async def test_several_devices_claim_at_once_without_cutting_each_other_off(
    gw: Gateway, admin: httpx.AsyncClient
) -> None:
    await admin.post("/provisioning/window", json={"duration_s": 60})
    creds = await claim_credentials(admin)
    serials = [serial() for _ in range(6)]
    results = await asyncio.gather(*(claim(FactoryIdentity(creds, s), 30) for s in serials))
    assert sorted(c.device_id for c in results) == sorted(s.lower() for s in serials)
    assert len({c.token for c in results}) == len(serials)


async def test_a_device_powered_on_before_the_window_opens_claims_once_it_opens(
    gw: Gateway, admin: httpx.AsyncClient
) -> None:
    await admin.delete("/provisioning/window")
    creds = await claim_credentials(admin)
    async with FactoryDevice(FactoryIdentity(creds, serial()), FAST, give_up_s=30) as factory:
        await asyncio.sleep(1.5)
        assert factory.credentials is None  # refused while closed, still trying
        await admin.post("/provisioning/window", json={"duration_s": 60})
        claimed = await factory.wait_claimed(20)
        assert claimed.device_id


async def test_claim_credential_is_refused_outside_the_window(
    gw: Gateway, admin: httpx.AsyncClient
) -> None:
    creds = await claim_credentials(admin)
    ctx = tls(creds.ca_pem)
    await admin.post("/provisioning/window", json={"duration_s": 60})
    assert await try_login(creds.host, creds.port, ctx, claim_slot_name(3), creds.password) == (
        "accepted"
    )
    await admin.delete("/provisioning/window")
    outcome = await try_login(creds.host, creds.port, ctx, claim_slot_name(3), creds.password)
    assert outcome.startswith("refused"), outcome
    with pytest.raises(ClaimError):
        await claim(FactoryIdentity(creds, serial()), give_up_s=1.5)


class _Session:
    """A claim session opened by hand, recording what it receives."""

    def __init__(self, slot: str, password: str) -> None:
        self.slot = slot
        self.client = Client(slot)
        self.client.set_config({"reconnect_retries": 0})
        self.client.set_auth_credentials(slot, password)
        self.received: list[tuple[str, bytes]] = []
        self.granted: list[Any] = []
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda _c, _mid, qos, _p: self.granted.append(qos)

    def _on_message(self, _c: Any, topic: str, payload: bytes, _q: int, _p: Any) -> int:
        self.received.append((topic, payload))
        return 0


async def test_claim_credential_cannot_publish_telemetry_or_read_another_reply(
    gw: Gateway, admin: httpx.AsyncClient
) -> None:
    r = await admin.post("/devices", json={"id": f"victim-{uuid.uuid4().hex[:6]}"})
    victim = r.json()["id"]
    await admin.post("/provisioning/window", json={"duration_s": 60})
    creds = await claim_credentials(admin)
    ctx = tls(creds.ca_pem)
    prefix = "planty/v1"
    spy = _Session(claim_slot_name(1), creds.password)
    honest = _Session(claim_slot_name(2), creds.password)
    for s in (spy, honest):
        await s.client.connect(creds.host, creds.port, ssl=ctx, version=4)
    try:
        # The spy tries every way to another slot's reply and to device topics.
        spy.client.subscribe(provision_topic(prefix, honest.slot, "reply"), qos=1)
        spy.client.subscribe(f"{prefix}/provision/#", qos=1)
        spy.client.subscribe(f"{prefix}/devices/#", qos=1)
        reply_topic = provision_topic(prefix, honest.slot, "reply")
        honest.client.subscribe(reply_topic, qos=1)
        # Mosquitto may grant a v3.1.1 subscription; its ACL filters every delivery.
        await eventually(lambda: len(spy.granted) == 3 and honest.granted, timeout=5)
        # Telemetry for a real device and on the spy's own (pseudo) device tree.
        for topic in (
            f"{prefix}/devices/{victim}/telemetry",
            f"{prefix}/devices/{spy.slot}/telemetry",
        ):
            spy.client.publish(topic, b'{"seq": 0, "readings": {"temperature": 99}}', qos=1)
        request = ClaimRequest(req="r1", serial=serial())
        honest.client.publish(
            provision_topic(prefix, honest.slot, "request"), encode_provisioning(request), qos=1
        )
        await eventually(lambda: honest.received, timeout=10)
        reply = decode_claim_reply(honest.received[0][1])
        assert reply.ok and reply.token
        await asyncio.sleep(0.3)
        assert spy.received == []  # nothing: neither the reply nor anything else
        assert await stored_seqs(admin, victim) == []
        stats = (await admin.get(f"/devices/{victim}")).json()
        assert stats["counts"]["messages"] == 0
    finally:
        for s in (spy, honest):
            with contextlib.suppress(Exception):
                await s.client.disconnect()


async def test_the_claim_session_is_cut_after_the_reply(
    gw: Gateway, admin: httpx.AsyncClient
) -> None:
    await admin.post("/provisioning/window", json={"duration_s": 60})
    creds = await claim_credentials(admin)
    s = _Session(claim_slot_name(5), creds.password)
    lost = asyncio.Event()
    s.client.on_disconnect = lambda *_a, **_k: lost.set()
    await s.client.connect(creds.host, creds.port, ssl=tls(creds.ca_pem), version=4)
    topic = provision_topic("planty/v1", s.slot, "reply")
    s.client.subscribe(topic, qos=1)
    await eventually(lambda: s.granted, timeout=5)
    request = ClaimRequest(req="r2", serial=serial())
    s.client.publish(
        provision_topic("planty/v1", s.slot, "request"), encode_provisioning(request), qos=1
    )
    await eventually(lambda: s.received, timeout=10)
    await asyncio.wait_for(lost.wait(), 5)  # claim_grace_s is 0.5 s in this gateway
