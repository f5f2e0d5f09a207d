"""API tokens: secrets shown once and stored as SHA-256, revocation, coalesced last-used writes."""

from __future__ import annotations

import asyncio

import pytest

from planty_broker.domain.identity import TokenScope
from planty_broker.northbound.api.auth import digest
from planty_broker.services.access.tokens import (
    InvalidTokenRequestError,
    TokenService,
    UnknownTokenError,
)
from planty_broker.storage.memory_identity import MemoryIdentityStore


class CountingStore(MemoryIdentityStore):
    def __init__(self) -> None:
        super().__init__()
        self.touches = 0

    async def touch_tokens(self, last_used: dict[str, int]) -> None:  # type: ignore[override]
        self.touches += 1
        await super().touch_tokens(last_used)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


async def service(store: MemoryIdentityStore | None = None) -> tuple[TokenService, Clock]:
    clock = Clock()
    tokens = TokenService(store or MemoryIdentityStore(), flush_every_s=3600, clock=clock)
    await tokens.start()
    return tokens, clock


async def test_the_secret_is_returned_once_and_only_its_digest_is_stored() -> None:
    store = MemoryIdentityStore()
    tokens, _ = await service(store)
    token, secret = await tokens.create("planty-server", "server")
    assert secret.startswith("pb_server_") and len(secret) > 40
    (stored,) = await store.list_tokens()
    assert stored.digest == digest(secret) and secret not in repr(stored)
    assert (await tokens.lookup(digest(secret))) == token
    assert await tokens.lookup(digest(secret + "x")) is None
    await tokens.stop()


async def test_a_revoked_token_no_longer_authenticates_and_stays_listed_on_request() -> None:
    tokens, _ = await service()
    token, secret = await tokens.create("grafana", TokenScope.READ)
    await tokens.revoke(token.id)
    assert await tokens.lookup(digest(secret)) is None
    assert await tokens.list() == []
    (listed,) = await tokens.list(include_revoked=True)
    assert listed.revoked_ms is not None
    with pytest.raises(UnknownTokenError):
        await tokens.revoke("tok-unknown")
    await tokens.stop()


async def test_tokens_survive_a_restart_of_the_service() -> None:
    store = MemoryIdentityStore()
    tokens, _ = await service(store)
    _, secret = await tokens.create("a", "admin")
    await tokens.stop()
    again, _ = await service(store)
    found = await again.lookup(digest(secret))
    assert found is not None and found.scope is TokenScope.ADMIN
    await again.stop()


async def test_last_use_is_kept_in_memory_and_written_in_one_batch() -> None:
    store = CountingStore()
    tokens, clock = await service(store)
    a, sa = await tokens.create("a", "read")
    b, sb = await tokens.create("b", "read")
    for _ in range(100):
        clock.now += 1
        await tokens.lookup(digest(sa))
        await tokens.lookup(digest(sb))
    assert store.touches == 0  # no write per request
    listed = {t.id: t.last_used_ms for t in await tokens.list()}
    assert listed == {a.id: clock.now, b.id: clock.now}  # yet the listing is current
    await tokens.flush()
    assert store.touches == 1
    assert {t.id: t.last_used_ms for t in await store.list_tokens()} == listed
    await tokens.stop()  # nothing new: no second write
    assert store.touches == 1


@pytest.mark.parametrize(("name", "scope"), [("", "read"), ("x" * 201, "read"), ("ok", "root")])
async def test_bad_requests_are_refused_with_a_clear_message(name: str, scope: str) -> None:
    tokens, _ = await service()
    with pytest.raises(InvalidTokenRequestError):
        await tokens.create(name, scope)
    await tokens.stop()


class CallCountingStore(MemoryIdentityStore):
    """Counts every call of the identity store's token methods."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def token_by_digest(self, digest: str):  # type: ignore[no-untyped-def]
        self.calls.append("token_by_digest")
        return await super().token_by_digest(digest)

    async def list_tokens(self):  # type: ignore[no-untyped-def]
        self.calls.append("list_tokens")
        return await super().list_tokens()


async def test_unknown_tokens_are_answered_from_memory_without_the_store() -> None:
    store = CallCountingStore()
    tokens, _ = await service(store)
    _, secret = await tokens.create("known", "read")
    store.calls.clear()
    for n in range(1000):
        assert await tokens.lookup(digest(f"pb_read_wrong{n}")) is None
    assert await tokens.lookup(digest(secret)) is not None
    assert store.calls == []
    await tokens.stop()


async def test_tokens_made_or_revoked_by_another_instance_are_seen_at_the_next_reread() -> None:
    store = MemoryIdentityStore()
    here, _ = await service(store)
    there, _ = await service(store)
    token, secret = await there.create("elsewhere", "server")
    assert await here.lookup(digest(secret)) is None  # not yet: no store query per miss
    assert await here.refresh()
    assert await here.lookup(digest(secret)) is not None
    await there.revoke(token.id)
    assert await here.refresh()
    assert await here.lookup(digest(secret)) is None
    await here.stop()
    await there.stop()


class SlowListStore(MemoryIdentityStore):
    """`list_tokens` reads its rows, then waits until released (a slow re-read)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.slow = False

    async def list_tokens(self):  # type: ignore[no-untyped-def]
        rows = await super().list_tokens()
        if self.slow:
            await self.release.wait()
        return rows


async def test_a_reread_overlapping_a_revoke_never_brings_the_token_back() -> None:
    store = SlowListStore()
    tokens, _ = await service(store)
    token, secret = await tokens.create("short-lived", "admin")
    store.slow = True
    reread = asyncio.create_task(tokens.refresh())  # reads the token as active...
    await asyncio.sleep(0)
    await tokens.revoke(token.id)  # ... and it is revoked meanwhile
    store.release.set()
    assert await reread is False  # discarded
    assert await tokens.lookup(digest(secret)) is None
    store.slow = False
    assert await tokens.refresh()
    assert await tokens.lookup(digest(secret)) is None
    await tokens.stop()
