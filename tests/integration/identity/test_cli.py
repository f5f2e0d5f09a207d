"""The identity commands of `planty` against a running gateway."""

from __future__ import annotations

import asyncio
import stat
import uuid
from pathlib import Path

import httpx
import pytest
from tests.integration.identity.conftest import ADMIN, api_client
from typer.testing import CliRunner, Result

from planty_broker.app import Gateway
from planty_broker.cli.main import app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def planty(gw: Gateway, *args: str) -> Result:
    """Run a command in a thread (it makes blocking HTTP calls to this event loop's gateway)."""
    runner = CliRunner()
    argv = [*args, "--url", gw.api_url]
    env = {"PLANTY_ADMIN_TOKEN": ADMIN, "COLUMNS": "200"}
    return await asyncio.to_thread(runner.invoke, app, argv, env=env)


async def test_tokens_create_list_revoke(gw: Gateway) -> None:
    r = await planty(gw, "tokens", "create", "nightly-export", "--scope", "read")
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip().splitlines()[0]
    assert secret.startswith("pb_read_")
    listed = await planty(gw, "tokens", "list")
    assert "nightly-export" in listed.stdout and secret not in listed.stdout
    token_id = next(w for w in listed.stdout.split() if w.startswith("tok-"))
    async with api_client(gw, secret) as reader:
        assert (await reader.get("/devices")).status_code == 200
        r = await planty(gw, "tokens", "revoke", token_id)
        assert r.exit_code == 0 and "revoked" in r.stdout
        assert (await reader.get("/devices")).status_code == 401
    r = await planty(gw, "tokens", "create", "x", "--scope", "root")
    assert r.exit_code == 1 and "scope" in r.output  # one clear line, no trace
    assert "Traceback" not in r.output


async def test_audit_lists_admin_actions(gw: Gateway) -> None:
    r = await planty(gw, "tokens", "create", "audited-one", "--scope", "read")
    assert r.exit_code == 0, r.output
    r = await planty(gw, "audit", "--action", "token")
    assert r.exit_code == 0, r.output
    assert "token.created" in r.stdout and "audited-one" in r.stdout and "admin" in r.stdout
    r = await planty(gw, "audit", "--actor", "nobody-at-all")
    assert r.exit_code == 0 and "0 audit entries" in r.stdout


async def test_pair_shows_the_code_and_unpair_needs_a_pairing(gw: Gateway) -> None:
    r = await planty(gw, "pair")
    assert r.exit_code == 0 and "pairing code:" in r.stdout
    async with api_client(gw, ADMIN) as admin:
        code = (await admin.get("/pairing")).json()["code"]
    assert code in r.stdout
    r = await planty(gw, "unpair")
    assert r.exit_code == 1 and "not paired" in r.output


async def test_device_credential_commands(
    gw: Gateway, admin: httpx.AsyncClient, tmp_path: Path
) -> None:
    device_id = f"cli-{uuid.uuid4().hex[:6]}"
    await admin.post("/devices", json={"id": device_id})
    r = await planty(gw, "devices", "accept", "--for", "2m")
    assert r.exit_code == 0 and "claim window open until" in r.stdout
    assert (await admin.get("/provisioning")).json()["window_open"] is True
    r = await planty(gw, "devices", "accept", "--close")
    assert r.exit_code == 0 and (await admin.get("/provisioning")).json()["window_open"] is False
    r = await planty(gw, "devices", "accept", "--for", "soon")
    assert r.exit_code == 1 and "not a duration" in r.output
    r = await planty(gw, "devices", "cert", device_id, "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    key = tmp_path / f"{device_id}.key.pem"
    assert "PRIVATE KEY" in key.read_text() and stat.S_IMODE(key.stat().st_mode) == 0o600
    r = await planty(gw, "devices", "rotate", device_id, "--overlap", "1h")
    assert r.exit_code == 0 and "sent" in r.stdout, r.output
    r = await planty(gw, "devices", "revoke", device_id)
    assert r.exit_code == 0 and "revoked" in r.stdout
    r = await planty(gw, "devices", "credentials", device_id)
    assert r.exit_code == 0 and r.stdout.count("revoked") >= 3, r.stdout
    r = await planty(gw, "devices", "claim-credential")
    assert r.exit_code == 0 and '"password"' in r.stdout and "planty-claim-" in r.stdout
