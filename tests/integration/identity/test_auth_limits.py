"""Failed API authentication never reaches the store, and is limited per client address.

Real HTTP from several loopback addresses (127.0.0.x) to a real gateway (SQLite,
supervised Mosquitto); see test_pairing_limits.py for how the addresses work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from tests.integration.identity.conftest import ADMIN, identity_settings, started

from planty_broker.app import Gateway
from planty_broker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LIMIT = 5


class CountingProxy:
    """Stands in for the token service's store and counts every method called on it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return value(*args, **kwargs)

        return counted


def client(gw: Gateway, n: int, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{n}")
    return httpx.AsyncClient(
        base_url=f"{gw.api_url}/api/v1", timeout=15, headers=headers, transport=transport
    )


async def get_devices(gw: Gateway, n: int, token: str) -> httpx.Response:
    async with client(gw, n, token) as c:
        return await c.get("/devices")


def count_store_calls(gw: Gateway) -> CountingProxy:
    assert gw.identity is not None
    tokens = gw.identity.tokens
    proxy = CountingProxy(tokens._store)
    tokens._store = proxy  # type: ignore[assignment]
    return proxy


def settings_in(data_dir: Path) -> Settings:
    return identity_settings(data_dir, api={"auth_max_failures": LIMIT})


@pytest_asyncio.fixture(loop_scope="session")
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with started(settings_in(tmp_path)) as gateway:
        yield gateway


async def test_unknown_tokens_never_reach_the_store(gw: Gateway) -> None:
    calls = count_store_calls(gw)
    for n in range(2, 42):  # 40 unknown tokens from 40 addresses: 401 each, no 429
        r = await get_devices(gw, n, f"pb_admin_unknown{n}")
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert calls.calls == []
    assert (await get_devices(gw, 2, ADMIN)).status_code == 200


async def test_a_revoked_token_is_refused_at_once(gw: Gateway) -> None:
    async with client(gw, 1, ADMIN) as admin:
        created = (await admin.post("/tokens", json={"name": "cron", "scope": "read"})).json()
        assert (await get_devices(gw, 60, created["token"])).status_code == 200
        assert (await admin.delete(f"/tokens/{created['id']}")).status_code == 200
    r = await get_devices(gw, 60, created["token"])
    assert r.status_code == 401, r.text


async def test_repeated_failures_from_one_address_get_429_not_from_another(gw: Gateway) -> None:
    for _ in range(LIMIT):
        assert (await get_devices(gw, 70, "pb_read_wrong")).status_code == 401
    r = await get_devices(gw, 70, "pb_read_wrong")
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert (await get_devices(gw, 71, "pb_read_wrong")).status_code == 401  # another address
    assert (await get_devices(gw, 70, ADMIN)).status_code == 200  # a valid token still passes
    async with client(gw, 1, ADMIN) as admin:
        metrics = (await admin.get(gw.api_url + "/metrics")).text
    assert 'planty_api_auth_refused_total{answer="rate_limited"} 1.0' in metrics


async def test_tokens_are_known_again_after_a_restart(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    async with started(settings) as first, client(first, 1, ADMIN) as admin:
        kept = (await admin.post("/tokens", json={"name": "kept", "scope": "read"})).json()
        gone = (await admin.post("/tokens", json={"name": "gone", "scope": "read"})).json()
        assert (await admin.delete(f"/tokens/{gone['id']}")).status_code == 200
    async with started(settings) as second:
        calls = count_store_calls(second)
        assert (await get_devices(second, 80, kept["token"])).status_code == 200
        assert (await get_devices(second, 81, gone["token"])).status_code == 401
        assert (await get_devices(second, 82, "pb_read_never")).status_code == 401
        assert calls.calls == []
