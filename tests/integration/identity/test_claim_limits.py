"""Claim provisioning is bounded: a cap per open window and a per-second rate, through the real
claim path (supervised Mosquitto over TLS, claim slots, the gateway's replies)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from gmqtt import Client
from tests.integration.core.conftest import eventually
from tests.integration.identity.conftest import (
    ADMIN,
    api_client,
    claim_credentials,
    identity_settings,
    started,
    tls,
)

from planty_broker.app import Gateway
from planty_broker.protocol import (
    ClaimReply,
    ClaimRequest,
    claim_slot_name,
    decode_claim_reply,
    encode_provisioning,
    provision_topic,
)
from planty_broker.simulator.claim import ClaimCredentials, FactoryIdentity, claim

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PREFIX = "planty/v1"


def serial() -> str:
    return f"SN-{uuid.uuid4().hex[:10].upper()}"


class Claimant:
    """A claim session opened by hand on one slot; `request()` returns the gateway's reply."""

    def __init__(self, creds: ClaimCredentials, slot_no: int) -> None:
        self.creds = creds
        self.slot = claim_slot_name(slot_no)
        self.received: list[bytes] = []
        self.subscribed = asyncio.Event()
        self.client = Client(self.slot)
        self.client.set_config({"reconnect_retries": 0})
        self.client.set_auth_credentials(self.slot, creds.password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self.subscribed.set()

    def _on_message(self, _c: Any, _t: str, payload: bytes, _q: int, _p: Any) -> int:
        self.received.append(payload)
        return 0

    async def connect(self) -> None:
        await self.client.connect(
            self.creds.host, self.creds.port, ssl=tls(self.creds.ca_pem), version=4
        )
        self.client.subscribe(provision_topic(PREFIX, self.slot, "reply"), qos=1)
        await asyncio.wait_for(self.subscribed.wait(), 5)

    def send(self) -> None:
        request = ClaimRequest(req=uuid.uuid4().hex[:16], serial=serial())
        self.client.publish(
            provision_topic(PREFIX, self.slot, "request"), encode_provisioning(request), qos=1
        )

    async def reply(self) -> ClaimReply:
        await eventually(lambda: self.received, timeout=10)
        return decode_claim_reply(self.received[0])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()


async def ask(creds: ClaimCredentials, slot_no: int) -> ClaimReply:
    c = Claimant(creds, slot_no)
    try:
        await c.connect()
        c.send()
        return await c.reply()
    finally:
        await c.close()


@pytest_asyncio.fixture(loop_scope="session")
async def capped(tmp_path: Path) -> AsyncIterator[Gateway]:
    """At most 3 claims per window, the rate out of the way."""
    settings = identity_settings(
        tmp_path,
        provisioning={"max_claims_per_window": 3, "claims_per_s": 1000, "claim_grace_s": 0.2},
    )
    async with started(settings) as gateway:
        yield gateway


async def test_claims_beyond_the_window_cap_are_refused_and_counted(capped: Gateway) -> None:
    async with api_client(capped, ADMIN) as admin:
        r = await admin.post("/provisioning/window", json={"duration_s": 60})
        assert r.json()["window_max_claims"] == 3
        creds = await claim_credentials(admin)
        replies = [await ask(creds, n) for n in range(5)]
        assert [r.ok for r in replies] == [True, True, True, False, False]
        assert {r.error for r in replies[3:]} == {"window_full"}
        assert "open a new one" in (replies[3].message or "")
        state = (await admin.get("/provisioning")).json()
        assert state["claims"] == 3 and state["window_claims"] == 3
        assert state["refused_by"] == {"window_full": 2}
        metrics = (await admin.get(capped.api_url + "/metrics")).text
        assert 'planty_device_claims_refused_total{reason="window_full"} 2.0' in metrics
        assert "planty_device_claims_total 3.0" in metrics
        # A new window is a fresh count; the operator may set its own cap.
        r = await admin.post("/provisioning/window", json={"duration_s": 60, "max_claims": 1})
        assert r.json()["window_claims"] == 0 and r.json()["window_max_claims"] == 1
        assert (await ask(creds, 10)).ok
        assert (await ask(creds, 11)).error == "window_full"
        r = await admin.post("/provisioning/window", json={"max_claims": 0})
        assert r.status_code == 422


@pytest_asyncio.fixture(loop_scope="session")
async def slow(tmp_path: Path) -> AsyncIterator[Gateway]:
    """One claim a second."""
    settings = identity_settings(tmp_path, provisioning={"claims_per_s": 1, "claim_grace_s": 0.2})
    async with started(settings) as gateway:
        yield gateway


async def test_claims_beyond_the_rate_are_refused_busy_and_devices_get_in_later(
    slow: Gateway,
) -> None:
    async with api_client(slow, ADMIN) as admin:
        await admin.post("/provisioning/window", json={"duration_s": 120})
        creds = await claim_credentials(admin)
        claimants = [Claimant(creds, n) for n in range(20, 26)]
        try:
            await asyncio.gather(*(c.connect() for c in claimants))
            for c in claimants:  # all at once: one gets in, the others are told `busy`
                c.send()
            replies = await asyncio.gather(*(c.reply() for c in claimants))
        finally:
            await asyncio.gather(*(c.close() for c in claimants))
        assert sum(r.ok for r in replies) >= 1
        busy = [r for r in replies if not r.ok]
        assert busy and {r.error for r in busy} == {"busy"}
        assert "retry" in (busy[0].message or "")
        state = (await admin.get("/provisioning")).json()
        assert state["refused_by"]["busy"] == len(busy)
        # The simulator's factory devices retry `busy`: all of them get in, one a second.
        got = await asyncio.gather(*(claim(FactoryIdentity(creds, serial()), 60) for _ in range(3)))
        assert len({c.device_id for c in got}) == 3
