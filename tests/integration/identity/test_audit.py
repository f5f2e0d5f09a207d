"""The audit trail through the real HTTP API: every admin action is an `audit` event with the
acting token's name and the client address (127.0.0.x), queryable at /api/v1/audit, kept
past the log's own retention for `events.security_keep_days`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from tests.integration.core.conftest import eventually
from tests.integration.identity.conftest import ADMIN, identity_settings, started

from planty_broker.app import Gateway
from planty_broker.domain.events import NewEvent

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def client(gw: Gateway, n: int, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{n}")
    return httpx.AsyncClient(
        base_url=f"{gw.api_url}/api/v1", timeout=15, headers=headers, transport=transport
    )


async def entries(admin: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await admin.get("/audit", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["entries"]
    return found


@pytest_asyncio.fixture(loop_scope="session")
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    # A log that keeps only its newest event, but security events a day.
    settings = identity_settings(
        tmp_path, events={"retention_max_rows": 1, "security_keep_days": 1}
    )
    async with started(settings) as gateway:
        yield gateway


async def test_every_admin_action_is_audited_with_who_and_where(gw: Gateway) -> None:
    dev = f"aud-{uuid.uuid4().hex[:6]}"
    async with client(gw, 5, ADMIN) as admin:
        r = await admin.post("/tokens", json={"name": "ops", "scope": "admin"})
        ops = r.json()
        code = (await admin.get("/pairing")).json()["code"]
    async with client(gw, 6, ops["token"]) as c:
        assert (await c.post("/devices", json={"id": dev})).status_code == 201
        assert (await c.post(f"/devices/{dev}/credentials", json={})).status_code == 201
        assert (await c.post(f"/devices/{dev}/revoke")).status_code == 200
        assert (await c.delete(f"/devices/{dev}")).status_code == 204
        r = await c.post("/provisioning/window", json={"duration_s": 60, "max_claims": 7})
        assert r.status_code == 200
        assert (await c.get("/provisioning/claim-credential")).status_code == 200
        assert (await c.delete("/provisioning/window")).status_code == 200
    async with client(gw, 7, None) as anonymous:
        r = await anonymous.post("/pairing/claim", json={"code": code, "account_id": "acc-a"})
        assert r.status_code == 200, r.text
        server = r.json()
    async with client(gw, 6, ops["token"]) as c:
        assert (await c.delete("/pairing")).status_code == 200
        assert (await c.delete(f"/tokens/{ops['id']}")).status_code == 200  # itself

    async with client(gw, 5, ADMIN) as admin:
        found = await entries(admin)
    got = [(e["action"], e["actor"], e["client"], e["device_id"]) for e in found]
    assert got == [
        ("token.created", "admin", "127.0.0.5", None),
        ("pairing.code_shown", "admin", "127.0.0.5", None),
        ("device.added", "ops", "127.0.0.6", dev),
        ("credential.issued", "ops", "127.0.0.6", dev),
        ("device.revoked", "ops", "127.0.0.6", dev),
        ("device.removed", "ops", "127.0.0.6", dev),
        ("claim_window.opened", "ops", "127.0.0.6", None),
        ("claim_secret.shown", "ops", "127.0.0.6", None),
        ("claim_window.closed", "ops", "127.0.0.6", None),
        ("pairing.claimed", "pairing-code:acc-a", "127.0.0.7", None),
        ("pairing.unpaired", "ops", "127.0.0.6", None),
        ("token.revoked", "ops", "127.0.0.6", None),
    ]
    by_action = {e["action"]: e for e in found}
    assert by_action["token.created"]["details"] == {
        "token_id": ops["id"],
        "name": "ops",
        "scope": "admin",
    }
    assert by_action["device.added"]["actor_token"] == ops["id"]
    assert by_action["claim_window.opened"]["details"]["max_claims"] == 7
    assert by_action["pairing.claimed"]["actor_token"] is None
    assert by_action["pairing.claimed"]["details"]["token_id"] == server["token_id"]
    assert by_action["pairing.unpaired"]["details"]["revoked_token_id"] == server["token_id"]
    # No secret in the trail.
    text = str(found)
    assert ops["token"] not in text and server["token"] not in text and code not in text


async def test_the_trail_is_filtered_and_paged(gw: Gateway) -> None:
    async with client(gw, 5, ADMIN) as admin:
        for n in range(3):
            await admin.post("/tokens", json={"name": f"t{n}", "scope": "read"})
        tokens = await entries(admin, action="token")
        assert len(tokens) >= 3 and {e["action"] for e in tokens} <= {
            "token.created",
            "token.revoked",
        }
        assert [e["action"] for e in await entries(admin, action="token.created", actor="admin")]
        first = (await admin.get("/audit", params={"limit": 1})).json()
        assert first["count"] == 1
        rest = await entries(admin, after=first["next_after"])
        assert rest and rest[0]["id"] > first["entries"][0]["id"]
        # The same events are in the log as type `audit`.
        r = await admin.get(gw.api_url + "/api/v1/events", params={"types": "audit"})
        assert r.json()["count"] >= 3
        # Admin only: a read or server token cannot see the trail.
        reader = (await admin.post("/tokens", json={"name": "r", "scope": "server"})).json()
    async with client(gw, 9, reader["token"]) as c:
        assert (await c.get("/audit")).status_code == 403


async def test_audit_events_outlive_the_logs_retention(gw: Gateway) -> None:
    svc = gw.services
    assert svc is not None and svc.events is not None
    async with client(gw, 5, ADMIN) as admin:
        await admin.post("/tokens", json={"name": "kept", "scope": "read"})
        before = len(await entries(admin))
        # Other events pile up behind it; the log keeps only its newest one.
        for n in range(5):
            await svc.events.writer.write(NewEvent(n + 1, "device_error", None, {"n": n}))
        await svc.events.prune_once()
        page = await svc.events.read(0, 1000)
        assert page.missed_through > 0  # the prefix retention did delete
        assert len(await entries(admin)) == before  # not one audit event of them
        assert "device_error" not in {e.type for e in page.events[:-1]}

    # A day and more later, they have had their own retention.
    events = svc.events
    real = events._clock
    events._clock = lambda: real() + 2 * 86_400_000
    try:
        await events.prune_once()
    finally:
        events._clock = real
    async with client(gw, 5, ADMIN) as admin:
        await eventually(lambda: _empty(admin), timeout=5)


async def _empty(admin: httpx.AsyncClient) -> bool:
    return await entries(admin) == []
