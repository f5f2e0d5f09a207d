"""A claim secret rotated on one instance is the one every instance accepts (issue 15).

The rotation record in the store carries the current and previous claim secrets in a
cluster; every instance re-reads it every second and applies the claim slots' passwords.
Rotated through the worker, the claim credential shown by the lease holder (which serves
the claim requests) is the new one; factory firmware with the new secret and firmware
with the previous one (overlap) both claim; the overlap ended through the lease holder is
ended on the worker too, and the previous secret no longer claims.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid
from types import ModuleType
from typing import Any

import pytest

from planty_broker.simulator.claim import ClaimCredentials, ClaimError, FactoryIdentity, claim
from tests.integration.cluster.test_shared_access import api, ok

pytestmark = pytest.mark.integration


def _firmware(data: dict[str, Any], password: str, first_slot: int) -> ClaimCredentials:
    m = data["mqtt"]
    return ClaimCredentials(
        m["host"], m["port"], m["ca_pem"], password, data["slots"], first_slot=first_slot
    )


async def _claims(creds: ClaimCredentials, give_up_s: float) -> bool:
    serial = f"SN-{uuid.uuid4().hex[:10].upper()}"
    try:
        got = await claim(FactoryIdentity(creds, serial), give_up_s=give_up_s)
    except ClaimError:
        return False
    return got.device_id == serial.lower() and bool(got.token)


@pytest.mark.timeout(300)
async def test_a_rotation_on_one_instance_holds_on_every_instance(
    cluster: tuple[ModuleType, Any],
) -> None:
    cl, c = cluster
    holder = await cl.leader(c.gateways)
    (worker,) = [g for g in c.gateways if g is not holder]
    async with api(holder, c.token) as on_holder, api(worker, c.token) as on_worker:
        ok(await on_holder.delete("/provisioning/claim-secret/previous"))  # a rerun's overlap
        before = ok(await on_holder.get("/provisioning/claim-credential"))
        assert (
            ok(await on_worker.get("/provisioning/claim-credential"))["password"]
            == (before["password"])
        )
        ok(await on_worker.post("/provisioning/window", json={"duration_s": 300}))
        try:
            rotated = ok(
                await on_worker.post("/provisioning/claim-secret/rotate", json={"overlap_s": 600})
            )
            assert rotated["password"] != before["password"]
            assert rotated["first_slot"] != before["first_slot"]
            seen = ok(await on_holder.get("/provisioning/claim-credential"))
            assert seen["password"] == rotated["password"]
            assert seen["first_slot"] == rotated["first_slot"]
            assert seen["previous"] is not None
            new = _firmware(seen, rotated["password"], rotated["first_slot"])
            old = _firmware(seen, before["password"], before["first_slot"])
            assert await _claims(new, 60), "the new claim secret did not claim"
            assert await _claims(old, 60), "the previous claim secret did not claim (overlap)"

            ok(await on_holder.delete("/provisioning/claim-secret/previous"))
            assert ok(await on_worker.get("/provisioning/claim-credential"))["previous"] is None
            assert not await _claims(old, 8), "the previous claim secret claimed after the end"
            assert await _claims(new, 60), "the new claim secret stopped claiming"
        finally:
            ok(await on_holder.delete("/provisioning/window"))


@pytest.mark.timeout(120)
async def test_two_rotations_at_once_on_two_instances_one_wins_and_both_say_so(
    cluster: tuple[ModuleType, Any],
) -> None:
    """Compare-and-set on the rotation record: of two rotations sent at once to two instances,
    one is answered with the new secret and the other with 409; the winner's secret is the
    one every instance shows (before, the last write won and a returned secret was lost)."""
    cl, c = cluster
    holder = await cl.leader(c.gateways)
    (worker,) = [g for g in c.gateways if g is not holder]
    async with api(holder, c.token) as on_holder, api(worker, c.token) as on_worker:
        ok(await on_holder.delete("/provisioning/claim-secret/previous"))
        for _round in range(3):
            answers = await asyncio.gather(
                on_holder.post("/provisioning/claim-secret/rotate", json={"overlap_s": 600}),
                on_worker.post("/provisioning/claim-secret/rotate", json={"overlap_s": 600}),
            )
            codes = sorted(r.status_code for r in answers)
            assert codes == [200, 409], [(r.status_code, r.text[:200]) for r in answers]
            (won,) = [r.json() for r in answers if r.status_code == 200]
            for client in (on_holder, on_worker):
                shown = ok(await client.get("/provisioning/claim-credential"))
                assert shown["password"] == won["password"]
                assert shown["first_slot"] == won["first_slot"]
            ok(await on_holder.delete("/provisioning/claim-secret/previous"))


@pytest.mark.timeout(120)
async def test_factory_firmware_gets_every_node_and_claims_past_a_dead_one(
    cluster: tuple[ModuleType, Any],
) -> None:
    """claim-credential gives `mqtt.endpoints` (every node, host:port first) as POST /devices
    does; firmware whose first node is down claims through the next and keeps the list."""
    cl, c = cluster
    nodes = [["localhost", p] for p in c.spec.mqtts_ports()]
    holder = await cl.leader(c.gateways)
    (worker,) = [g for g in c.gateways if g is not holder]
    async with api(worker, c.token) as on_worker:
        data = ok(await on_worker.get("/provisioning/claim-credential"))
        assert [data["mqtt"]["host"], data["mqtt"]["port"]] == nodes[0]
        assert data["mqtt"]["endpoints"] == nodes
        creds = ClaimCredentials.from_claim_credential(data)
        with socket.socket() as s:  # a port nobody listens on: a node that is down
            s.bind(("localhost", 0))
            dead = ("localhost", s.getsockname()[1])
        firmware = dataclasses.replace(
            creds, host=dead[0], port=dead[1], endpoints=(dead, *creds.endpoints)
        )
        ok(await on_worker.post("/provisioning/window", json={"duration_s": 120}))
        try:
            serial = f"SN-{uuid.uuid4().hex[:10].upper()}"
            got = await claim(FactoryIdentity(firmware, serial), give_up_s=60)
        finally:
            ok(await on_worker.delete("/provisioning/window"))
        assert got.device_id == serial.lower() and got.token
        assert [list(e) for e in got.alternates] == nodes  # every node beside host:port
