"""The shared pairing and claim-window state (`AccessStateStore`) on memory, SQLite and
PostgreSQL: two stores on one database behave as two gateway instances (scale-out)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from planty_broker.domain.identity import ClaimWindow, StoredPairingCode
from planty_broker.ports.store import AccessStateStore
from planty_broker.services.access.pairing import (
    AlreadyPairedError,
    ExpiredCodeError,
    InvalidCodeError,
    PairingService,
    RateLimitedError,
)
from planty_broker.services.access.tokens import TokenService
from planty_broker.storage.memory_access import MemoryAccessStore
from planty_broker.storage.sql import SqlStore
from planty_broker.storage.sql_access import SqlAccessStore
from planty_broker.storage.sql_identity import SqlIdentityStore

Pair = tuple[AccessStateStore, AccessStateStore]


@pytest_asyncio.fixture(
    params=[
        "memory",
        pytest.param("sqlite", marks=pytest.mark.integration),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def two(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    """Two handles on one shared state, as two gateway instances have."""
    if request.param == "memory":
        one = MemoryAccessStore()
        yield one, one
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'planty.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_server").create()
    a, b = SqlStore(url), SqlStore(url)
    await a.open()
    await b.open()
    try:
        yield SqlAccessStore(a), SqlAccessStore(b)
    finally:
        await a.close()
        await b.close()


def code(n: int, expires_ms: int = 10_000) -> StoredPairingCode:
    return StoredPairingCode(f"c{n}", f"scrypt$00${n:02x}", 1000 + n, expires_ms)


async def test_codes_are_kept_newest_first_and_bounded(two: Pair) -> None:
    a, b = two
    for n in range(5):
        await (a if n % 2 else b).add_pairing_code(code(n), keep=3)
    assert [c.id for c in await b.pairing_codes()] == ["c4", "c3", "c2"]
    assert (await a.pairing_codes())[0] == code(4)
    await a.clear_pairing_codes()
    assert await b.pairing_codes() == []


async def test_counters_add_up_across_instances(two: Pair) -> None:
    a, b = two
    await a.add_counts({"x": 1, "y": 0})
    await b.add_counts({"x": 2})
    assert await a.counts() == {"x": 3}


async def test_the_claim_window_opens_extends_counts_and_closes_once(two: Pair) -> None:
    a, b = two
    assert await b.get_claim_window() is None
    assert not await a.close_claim_window(1)
    assert await b.take_claim(1) is None  # no window
    assert await a.open_claim_window(1000, 5000, 2) == ClaimWindow(1000, 5000, None, 0, 2)
    assert await b.take_claim(1500) == ClaimWindow(1000, 5000, None, 1, 2)
    assert await a.take_claim(1600) == ClaimWindow(1000, 5000, None, 2, 2)
    assert await b.take_claim(1700) is None  # its cap, whichever instance asks
    await a.give_back_claim()  # a claim failed
    assert (await b.get_claim_window()) == ClaimWindow(1000, 5000, None, 1, 2)
    # Opened again while open: the end and the cap move, the count starts afresh.
    assert await b.open_claim_window(2000, 9000, 3) == ClaimWindow(1000, 9000, None, 0, 3)
    assert await a.take_claim(9000) is None  # its time is over
    assert not await b.close_claim_window(8999, expired_only=True)
    assert await a.close_claim_window(9000, expired_only=True)
    assert not await b.close_claim_window(9001)  # closed once
    assert await b.get_claim_window() == ClaimWindow(1000, 9000, 9000, 0, 3)
    assert await b.take_claim(9001) is None  # closed
    await b.give_back_claim()  # never below 0
    assert (await a.get_claim_window()) == ClaimWindow(1000, 9000, 9000, 0, 3)
    assert await a.open_claim_window(10_000, 11_000, 5) == ClaimWindow(10_000, 11_000, None, 0, 5)


@pytest.mark.integration
async def test_pairing_through_two_instances_on_postgresql(pg_server: object) -> None:
    url = pg_server.create()  # type: ignore[attr-defined]
    now = [1_000_000]
    stores = [SqlStore(url), SqlStore(url)]
    services = []
    for s in stores:
        await s.open()
        ident = SqlIdentityStore(s)
        tokens = TokenService(ident, clock=lambda: now[0])
        p = PairingService(ident, SqlAccessStore(s), tokens, clock=lambda: now[0])
        await p.start()
        services.append(p)
    first, second = services
    try:
        shown = await first.current_code()
        assert shown is not None
        for _ in range(2):
            with pytest.raises(InvalidCodeError):
                await second.claim("22222222", "acc", "10.1.1.1")
        now[0] += 601_000
        with pytest.raises(ExpiredCodeError):
            await second.claim(shown.code, "acc", "10.1.1.2")
        fresh = await first.current_code()
        assert fresh is not None and fresh != shown
        await first.stop()
        await stores[0].close()  # the instance that showed it is gone
        result = await second.claim(fresh.display, "acc-9", "10.1.1.3")
        assert result.pairing.account_id == "acc-9"
        with pytest.raises(AlreadyPairedError):
            await second.claim(fresh.code, "acc-9", "10.1.1.3")
        assert (await second.status()).failed_claims == 3
        for _ in range(3):
            with pytest.raises((AlreadyPairedError, RateLimitedError)):
                await second.claim("22222222", "acc", "10.1.1.1")
    finally:
        for s in stores:
            await s.close()
