"""Pairing and the claim window on the cluster work from any instance and survive the lease
holder (issue 15): their state is in PostgreSQL, not in the lease holder's memory.

The folder's shared set-up (conftest.py: RabbitMQ, a private PostgreSQL, 2 gateway instances):
a pairing code shown by the lease holder and a claim window opened through the other
instance; the lease holder is killed (kill -9); the code still pairs and a factory-fresh
device still claims its credential through the survivor; the killed instance comes back
as a worker and sees the pairing and the window, and closes the window for everybody.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from planty_broker.simulator.claim import ClaimCredentials, FactoryIdentity, claim
from tests.integration.cluster.conftest import restart

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.is_success, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}"
    body: dict[str, Any] = r.json()
    return body


def api(gw: Any, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gw.url + "/api/v1", headers={"authorization": f"Bearer {token}"}, timeout=30
    )


@pytest.mark.timeout(420)
async def test_pairing_and_the_claim_window_outlive_the_lease_holder(
    cluster: tuple[ModuleType, Any],
) -> None:
    cl, c = cluster
    holder = await cl.leader(c.gateways)
    (other,) = [g for g in c.gateways if g is not holder]
    async with api(holder, c.token) as on_holder, api(other, c.token) as on_other:
        shown = ok(await on_holder.get("/pairing"))
        if shown["paired"]:  # a rerun on the shared set-up: start unpaired again
            ok(await on_holder.delete("/pairing"))
            shown = ok(await on_holder.get("/pairing"))
        assert shown["paired"] is False and shown["code"]
        r = await on_other.post("/provisioning/window", json={"duration_s": 300})
        assert r.status_code == 200 and r.json()["window_open"] is True, r.text
        assert "x-planty-served-by" not in r.headers  # answered there, not forwarded
        assert ok(await on_holder.get("/provisioning"))["window_open"] is True
        data = ok(await on_other.get("/provisioning/claim-credential"))
        claims_before = ok(await on_holder.get("/provisioning"))["claims"]  # other tests' too

    cl.gateway_kill(holder)  # kill -9: its memory is gone
    try:
        await _on_the_survivor(cl, c, other, shown, data)
    finally:
        await restart(cl, c, holder)  # back, as a worker now

    async with api(holder, c.token) as again, api(other, c.token) as on_other:
        pairing = ok(await again.get("/pairing"))
        assert pairing["paired"] is True and pairing["account_id"] == "acct-1"
        window = ok(await again.get("/provisioning"))
        assert window["window_open"] is True and window["window_claims"] == 1
        assert window["claims"] == claims_before + 1
        assert ok(await again.delete("/provisioning/window"))["window_open"] is False
        assert ok(await on_other.get("/provisioning"))["window_open"] is False


async def _on_the_survivor(
    cl: ModuleType, c: Any, other: Any, shown: dict[str, Any], data: dict[str, Any]
) -> None:
    assert await cl.leader([other]) is other
    async with api(other, c.token) as on_other:
        r = await on_other.post(
            "/pairing/claim", json={"code": shown["code"], "account_id": "acct-1"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["account_id"] == "acct-1" and r.json()["token"]
        assert ok(await on_other.get("/provisioning"))["window_open"] is True
        m = data["mqtt"]
        creds = ClaimCredentials(
            m["host"], m["port"], m["ca_pem"], data["password"], data["slots"],
            first_slot=data["first_slot"],  # a rotation (another test) moves the slots
        )  # fmt: skip
        serial = f"SN-{uuid.uuid4().hex[:10].upper()}"
        got = await claim(FactoryIdentity(creds, serial), give_up_s=90)
        assert got.device_id == serial.lower() and got.token
        assert (await on_other.get(f"/devices/{got.device_id}")).status_code == 200


@pytest.mark.timeout(120)
async def test_a_new_device_gets_every_node(
    cluster: tuple[ModuleType, Any], tmp_path: Path
) -> None:
    """POST /devices on any instance gives every node (`mqtt.endpoints`, host:port first),
    and `planty devices add --export-device-config` writes them for the MicroPython client."""
    cl, c = cluster
    nodes = [["localhost", p] for p in c.spec.mqtts_ports()]
    holder = await cl.leader(c.gateways)
    (worker,) = [g for g in c.gateways if g is not holder]
    async with api(worker, c.token) as on_worker:
        r = await on_worker.post("/devices", json={"id": f"ep-{uuid.uuid4().hex[:8]}"})
        assert r.status_code == 201, r.text
        mqtt = r.json()["mqtt"]
        assert [mqtt["host"], mqtt["port"]] == nodes[0] and mqtt["endpoints"] == nodes
        assert ok(await on_worker.get("/mqtt"))["endpoints"] == nodes
    out = tmp_path / "secrets.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTY_")}
    env["PLANTY_ADMIN_TOKEN"] = c.token
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv" / "bin" / "planty"), "devices", "add", f"ep-{uuid.uuid4().hex[:8]}",
        "--export-device-config", str(out), "--url", worker.url, "--data-dir", str(tmp_path),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    text, _ = await proc.communicate()
    assert proc.returncode == 0, text.decode()
    assert json.loads(out.read_text())["mqtt"]["endpoints"] == nodes
