"""`planty devices claim-secret rotate` over real Mosquitto and TLS (issue 13): during the
overlap factory firmware with the previous claim secret and firmware with the new one both
claim; after it only the new one does."""

from __future__ import annotations

import dataclasses
import stat
import uuid

import httpx
import pytest
from tests.integration.identity.conftest import FAST, claim_credentials, tls, try_login

from planty_broker.app import Gateway
from planty_broker.protocol import claim_slot_name
from planty_broker.simulator.claim import ClaimCredentials, FactoryDevice, FactoryIdentity

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def claims(creds: ClaimCredentials) -> str:
    sn = f"SN-{uuid.uuid4().hex[:10].upper()}"
    async with FactoryDevice(FactoryIdentity(creds, sn), FAST) as factory:
        claimed = await factory.wait_claimed(20)
    return claimed.device_id


async def login(creds: ClaimCredentials, slot: int) -> str:
    return await try_login(
        creds.host, creds.port, tls(creds.ca_pem), claim_slot_name(slot), creds.password
    )


async def test_both_claim_secrets_work_during_the_overlap_and_only_the_new_one_after(
    gw: Gateway, admin: httpx.AsyncClient
) -> None:
    await admin.post("/provisioning/window", json={"duration_s": 120})
    old = await claim_credentials(admin)
    assert old.first_slot == 0
    assert await claims(old)

    r = await admin.post("/provisioning/claim-secret/rotate", json={"overlap_s": 3600})
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["password"] != old.password and rotated["first_slot"] == 64
    assert rotated["previous"]["claim_usernames"] == "planty-claim-0 .. planty-claim-63"
    new = await claim_credentials(admin)
    assert (new.password, new.first_slot) == (rotated["password"], 64)
    secret_file = gw.settings.data_dir / "mqtt-claim.secret"
    assert secret_file.read_text().strip() == new.password
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

    # The overlap: firmware flashed with either secret claims on its own usernames.
    assert await claims(old)
    assert await claims(new)
    assert await login(old, 64) == "refused: CONNACK 5"  # never the old secret on the new slots
    assert await login(new, 0) == "refused: CONNACK 5"
    again = await admin.post("/provisioning/claim-secret/rotate", json={"overlap_s": 60})
    assert again.status_code == 409  # one rotation at a time

    # The end of the overlap: the previous secret is refused everywhere.
    assert (await admin.delete("/provisioning/claim-secret/previous")).status_code == 200
    assert await login(old, 0) == "refused: CONNACK 5"
    assert await login(old, 3) == "refused: CONNACK 5"
    assert await claims(new)
    assert not (gw.settings.data_dir / "mqtt-claim.previous.secret").exists()
    creds = (await admin.get("/provisioning/claim-credential")).json()
    assert creds["previous"] is None and creds["first_slot"] == 64

    # The next rotation moves back to the first half.
    r = await admin.post("/provisioning/claim-secret/rotate", json={"overlap_s": 0})
    newer = dataclasses.replace(new, password=r.json()["password"], first_slot=0)
    assert r.json()["previous"] is None  # no overlap asked: the previous one ends now
    assert await login(new, 64) == "refused: CONNACK 5"
    assert await claims(newer)
    await admin.delete("/provisioning/window")
