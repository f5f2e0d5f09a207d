"""`POST /api/v1/pki/rotate-ca` and `planty pki rotate-ca` on a running gateway (issue 13):
the bundle devices fetch follows the steps, and a device trusting it connects throughout.
The TLS details of each step are in tests/integration/mqttserver/test_ca_rotation.py."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest
from tests.integration.identity.conftest import ADMIN, tls, try_login

from planty_broker.app import Gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def cli(gw: Gateway, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "planty"),
        *args,
        "--url",
        gw.api_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PLANTY_ADMIN_TOKEN": ADMIN, "COLUMNS": "200"},
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_rotate_ca_through_the_api_and_the_cli(gw: Gateway, admin: httpx.AsyncClient) -> None:
    created = (await admin.post("/devices", json={"id": "ca-dev"})).json()
    token = created["token"]
    port = created["mqtt"]["port"]
    before = (await admin.get("/pki")).json()
    assert before["phase"] == "none" and set(before["expires"]) == {"server", "ca"}
    old = before["ca_pem"]

    started = (await admin.post("/pki/rotate-ca", json={"step": "start"})).json()
    assert started["phase"] == "overlap" and started["ca_pem"].count("BEGIN CERTIFICATE") == 2
    bundle = (await admin.get("/mqtt")).json()["ca_pem"]  # what a device fetches
    assert bundle == started["ca_pem"] and bundle.startswith(old)
    again = await admin.post("/pki/rotate-ca", json={"step": "start"})
    assert again.status_code == 409 and "under way" in again.text
    assert await try_login("localhost", port, tls(bundle), "ca-dev", token) == "accepted"

    code, out = await cli(gw, "pki", "rotate-ca", "switch")
    assert code == 0, out
    assert "phase switched" in out
    assert await try_login("localhost", port, tls(bundle), "ca-dev", token) == "accepted"
    assert (await try_login("localhost", port, tls(old), "ca-dev", token)).startswith("tls:")

    done = (await admin.post("/pki/rotate-ca", json={"step": "finish"})).json()
    assert done["phase"] == "none" and done["ca_pem"] == bundle[len(old) :]
    assert (await admin.post("/pki/rotate-ca", json={"step": "later"})).status_code == 422
