"""Pairing limits through real HTTP from several loopback addresses (127.0.0.x).

The API listens on 127.0.0.1; a client that binds its socket to 127.0.0.N reaches it
from that source address (Linux routes all of 127/8 to the loopback interface), so
the gateway sees N different client addresses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from tests.integration.identity.conftest import ADMIN, api_client, identity_settings, started

from planty_broker.app import Gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WRONG = "2222-2222"


def from_address(gw: Gateway, n: int) -> httpx.AsyncClient:
    """A client whose connections come from 127.0.0.n."""
    transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{n}")
    return httpx.AsyncClient(base_url=f"{gw.api_url}/api/v1", timeout=15, transport=transport)


async def claim_from(gw: Gateway, n: int, code: str, account: str) -> httpx.Response:
    async with from_address(gw, n) as c:
        return await c.post("/pairing/claim", json={"code": code, "account_id": account})


async def live_code(gw: Gateway) -> str:
    async with api_client(gw, ADMIN) as admin:
        code: str = (await admin.get("/pairing")).json()["code"]
    return code


@pytest_asyncio.fixture(loop_scope="session")
async def fresh(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with started(identity_settings(tmp_path)) as gateway:
        yield gateway


async def test_wrong_codes_from_ten_addresses_do_not_lock_out_the_owner(fresh: Gateway) -> None:
    """Issue 13: 40 wrong codes from 10 addresses made the owner's right code answer 429."""
    code = await live_code(fresh)
    assert code != WRONG
    for n in range(2, 12):  # 10 attacker addresses, 4 wrong codes each (under 5 per address)
        for _ in range(4):
            r = await claim_from(fresh, n, WRONG, f"mallory-{n}")
            assert r.status_code == 403, r.text
    r = await claim_from(fresh, 20, code, "owner")  # the owner, from an 11th address
    assert r.status_code == 200, r.text
    assert r.json()["account_id"] == "owner"


async def test_one_address_is_limited_and_another_is_not(fresh: Gateway) -> None:
    code = await live_code(fresh)
    for _ in range(5):
        assert (await claim_from(fresh, 30, WRONG, "acc-a")).status_code == 403
    r = await claim_from(fresh, 30, code, "acc-a")  # even the right code, from there
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["retry_after_s"] >= 1
    r = await claim_from(fresh, 31, code, "acc-b")
    assert r.status_code == 200, r.text


async def test_an_account_guessed_at_from_many_addresses_still_pairs_from_a_clean_one(
    fresh: Gateway,
) -> None:
    """Per account: addresses that already guessed wrong for it are stopped; the owner
    (whose address has not failed) is never locked out by them."""
    code = await live_code(fresh)
    for n in range(40, 45):  # 5 addresses x 4 wrong codes for one account: 20 = the limit
        for _ in range(4):
            assert (await claim_from(fresh, n, WRONG, "victim")).status_code == 403
    r = await claim_from(fresh, 45, WRONG, "victim")  # a fresh address gets its one try
    assert r.status_code == 403, r.text
    r = await claim_from(fresh, 40, WRONG, "victim")  # a failed address is stopped
    assert r.status_code == 429, r.text
    r = await claim_from(fresh, 41, WRONG, "other")  # ... for that account only
    assert r.status_code == 403, r.text
    r = await claim_from(fresh, 46, code, "victim")  # the owner, from a clean address
    assert r.status_code == 200, r.text
