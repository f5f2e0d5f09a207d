"""Pairing and the claim window on the cluster work from any instance and survive the lease
holder (issue 15): their state is in PostgreSQL, not in the lease holder's memory.

One RabbitMQ node, a private PostgreSQL and 2 gateway instances (`scripts/cluster.py`):
a pairing code shown by the lease holder and a claim window opened through the other
instance; the lease holder is killed (kill -9); the code still pairs and a factory-fresh
device still claims its credential through the survivor; the killed instance comes back
as a worker and sees the pairing and the window, and closes the window for everybody.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import pytest_asyncio

from planty_broker.simulator.claim import ClaimCredentials, FactoryIdentity, claim

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def _cluster_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_script", ROOT / "scripts" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cluster_script"] = module
    spec.loader.exec_module(module)
    return module


@pytest_asyncio.fixture
async def cluster(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[ModuleType, Any]]:
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        pytest.skip("rabbitmq-server is not installed (bin/setup --dev installs it)")
    folder = Path(tempfile.mkdtemp(prefix="planty-access-", dir="/tmp"))
    folder.chmod(0o755)
    monkeypatch.setenv("BIN_CLUSTER_DIR", str(folder / "c"))
    cl = _cluster_script()
    try:
        yield cl, await cl.start(2, nodes=1)
    finally:
        for log in sorted((folder / "c").glob("gw*/gateway.log")):  # shown when it failed
            print(f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}")
        cl.stop()
        shutil.rmtree(folder, ignore_errors=True)


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
        assert shown["paired"] is False and shown["code"]
        r = await on_other.post("/provisioning/window", json={"duration_s": 300})
        assert r.status_code == 200 and r.json()["window_open"] is True, r.text
        assert "x-planty-served-by" not in r.headers  # answered there, not forwarded
        assert ok(await on_holder.get("/provisioning"))["window_open"] is True
        data = ok(await on_other.get("/provisioning/claim-credential"))

    cl.gateway_kill(holder)  # kill -9: its memory is gone
    assert await cl.leader([other]) is other

    async with api(other, c.token) as on_other:
        r = await on_other.post(
            "/pairing/claim", json={"code": shown["code"], "account_id": "acct-1"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["account_id"] == "acct-1" and r.json()["token"]
        assert ok(await on_other.get("/provisioning"))["window_open"] is True
        m = data["mqtt"]
        creds = ClaimCredentials(m["host"], m["port"], m["ca_pem"], data["password"], data["slots"])
        serial = f"SN-{uuid.uuid4().hex[:10].upper()}"
        got = await claim(FactoryIdentity(creds, serial), give_up_s=90)
        assert got.device_id == serial.lower() and got.token
        assert (await on_other.get(f"/devices/{got.device_id}")).status_code == 200

    cl.gateway_start(holder)  # back, as a worker now
    c.save()  # its new pid: the fixture's stop() ends it
    await cl.wait_healthy(holder)
    async with api(holder, c.token) as again, api(other, c.token) as on_other:
        pairing = ok(await again.get("/pairing"))
        assert pairing["paired"] is True and pairing["account_id"] == "acct-1"
        window = ok(await again.get("/provisioning"))
        assert window["window_open"] is True and window["window_claims"] == 1
        assert window["claims"] == 1
        assert ok(await again.delete("/provisioning/window"))["window_open"] is False
        assert ok(await on_other.get("/provisioning"))["window_open"] is False
