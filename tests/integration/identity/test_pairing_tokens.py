"""Pairing with an account and API tokens, through the real HTTP API of a running gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from tests.integration.identity.conftest import ADMIN, api_client, identity_settings, started

from planty_broker.app import Gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def code_of(admin: httpx.AsyncClient) -> str:
    r = await admin.get("/pairing")
    assert r.status_code == 200
    code: str = r.json()["code"]
    return code


async def claim(gw: Gateway, code: str, account: str = "acc-1") -> httpx.Response:
    async with api_client(gw, None) as anonymous:  # the claim needs no bearer token
        return await anonymous.post("/pairing/claim", json={"code": code, "account_id": account})


async def test_pairing_gives_the_server_a_token_once_and_unpairing_revokes_it(
    gw: Gateway, admin: httpx.AsyncClient
) -> None:
    code = await code_of(admin)
    assert len(code.replace("-", "")) == 8
    assert not set(code) & set("01ILO")  # no look-alikes
    r = await claim(gw, code.lower())  # case and dash do not matter to a person typing it
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["paired"] and body["account_id"] == "acc-1" and body["scope"] == "server"
    server = body["token"]
    status = (await admin.get("/pairing")).json()
    assert status["paired"] and status["account_id"] == "acc-1" and "code" not in status
    assert server not in (await admin.get("/tokens")).text  # listed, never shown again
    # The server's token works for the device API, not for tokens (admin only).
    async with api_client(gw, server) as srv:
        assert (await srv.get("/devices")).status_code == 200
        assert (await srv.post("/devices", json={"id": "paired-dev-1"})).status_code == 201
        assert (await srv.get("/tokens")).status_code == 403
        # The code was single use; pairing again is refused either way.
        assert (await claim(gw, code)).status_code == 409
        r = await admin.delete("/pairing")
        assert r.status_code == 200 and r.json()["revoked_token_id"] == body["token_id"]
        assert (await srv.get("/devices")).status_code == 401
    new_code = await code_of(admin)
    assert new_code != code


async def test_only_admin_tokens_see_the_code(gw: Gateway, admin: httpx.AsyncClient) -> None:
    r = await admin.post("/tokens", json={"name": "dashboard", "scope": "read"})
    async with api_client(gw, r.json()["token"]) as reader:
        status = (await reader.get("/pairing")).json()
    assert status["paired"] is False and "code" not in status and status["expires_at"]


async def test_a_read_token_cannot_post_and_a_revoked_token_gets_401(
    gw: Gateway, admin: httpx.AsyncClient
) -> None:
    r = await admin.post("/tokens", json={"name": "grafana", "scope": "read"})
    assert r.status_code == 201
    created = r.json()
    secret = created["token"]
    assert secret.startswith("pb_read_")
    async with api_client(gw, secret) as reader:
        assert (await reader.get("/devices")).status_code == 200
        r = await reader.post("/devices", json={"id": "read-only-dev"})
        assert r.status_code == 403 and "read" in r.json()["error"]["message"]
        assert (await reader.delete("/devices/read-only-dev")).status_code == 403
        listed = {t["id"]: t for t in (await admin.get("/tokens")).json()["tokens"]}
        assert listed[created["id"]]["last_used_at"] is not None  # recorded (in memory first)
        r = await admin.delete(f"/tokens/{created['id']}")
        assert r.status_code == 200 and r.json()["revoked_at"]
        r = await reader.get("/devices")
        assert r.status_code == 401
    assert created["id"] not in {t["id"] for t in (await admin.get("/tokens")).json()["tokens"]}
    every = (await admin.get("/tokens", params={"all": "true"})).json()["tokens"]
    assert created["id"] in {t["id"] for t in every}
    assert all("token" not in t for t in every)


async def test_last_use_is_written_to_the_store(gw: Gateway, admin: httpx.AsyncClient) -> None:
    r = await admin.post("/tokens", json={"name": "cron", "scope": "server"})
    created = r.json()
    async with api_client(gw, created["token"]) as c:
        await c.get("/devices")
    tokens = gw.identity.tokens
    await tokens.flush()  # what the periodic flush does
    stored = {t.id: t for t in await tokens._store.list_tokens()}
    assert stored[created["id"]].last_used_ms is not None


async def test_the_claim_route_is_the_only_one_open_without_a_token(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.api_url, timeout=10) as anonymous:
        spec = (await anonymous.get("/openapi.json")).json()
        open_routes = []
        for path, methods in spec["paths"].items():
            if not path.startswith("/api/v1"):
                continue
            url = path.replace("{", "").replace("}", "")
            for method in methods:
                r = await anonymous.request(method.upper(), url, json={})
                if r.status_code != 401:
                    open_routes.append((method, path, r.status_code))
    assert open_routes == [("post", "/api/v1/pairing/claim", 422)]


# ---------------------------------------------------------------- own gateways


@pytest_asyncio.fixture(loop_scope="session")
async def fresh(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway of its own: pairing codes live 1 s, refusals are counted from zero."""
    async with started(identity_settings(tmp_path, pairing={"code_ttl_s": 1.0})) as gateway:
        yield gateway


async def test_wrong_codes_are_counted_and_rate_limited(fresh: Gateway) -> None:
    async with api_client(fresh, ADMIN) as admin:
        for _ in range(5):
            r = await claim(fresh, "AAAA-AAAA", "mallory")
            assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_code"
        right = await code_of(admin)
        r = await claim(fresh, right, "mallory")  # even the right code, now
        assert r.status_code == 429, r.text
        assert r.json()["error"]["retry_after_s"] >= 1
        status = (await admin.get("/pairing")).json()
        assert status["paired"] is False
        assert status["failed_claims"] == 5 and status["rate_limited"] == 1


async def test_an_expired_code_is_refused(fresh: Gateway) -> None:
    async with api_client(fresh, ADMIN) as admin:
        old = await code_of(admin)
        await asyncio.sleep(1.3)
        r = await claim(fresh, old)
        assert r.status_code == 410 and r.json()["error"]["code"] == "code_expired"
        assert (await admin.get("/pairing")).json()["paired"] is False
        r = await claim(fresh, await code_of(admin))  # a fresh one works
        assert r.status_code == 200


async def test_planty_run_shows_the_pairing_code_on_its_terminal(tmp_path: Path) -> None:
    lines: list[str] = []
    async with Gateway(identity_settings(tmp_path), announce=lines.append) as gateway:
        admin = api_client(gateway, ADMIN)
        code = await code_of(admin)
        await admin.aclose()
    shown = [line for line in lines if "pairing code:" in line]
    assert len(shown) == 1 and code in shown[0] and "expires in 10 min" in shown[0]
