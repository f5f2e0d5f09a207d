"""Pairing: the code's alphabet, expiry and single use; counting and rate limiting of wrong codes;
two services on one shared state behave as two gateway instances on one database."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from planty_broker.services.access.pairing import (
    ALPHABET,
    AlreadyPairedError,
    ExpiredCodeError,
    InvalidCodeError,
    NotPairedError,
    PairingService,
    RateLimitedError,
    normalize_code,
)
from planty_broker.services.access.tokens import TokenService
from planty_broker.storage.memory_access import MemoryAccessStore
from planty_broker.storage.memory_identity import MemoryIdentityStore


class Clocks:
    def __init__(self) -> None:
        self.ms = 1_000_000_000

    def wall(self) -> int:
        return self.ms

    def mono(self) -> float:
        return self.ms / 1000

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


class Shared:
    """One database: what several gateway instances share."""

    def __init__(self) -> None:
        self.ident = MemoryIdentityStore()
        self.access = MemoryAccessStore()
        self.clocks = Clocks()

    async def instance(self) -> tuple[PairingService, TokenService]:
        tokens = TokenService(self.ident, clock=self.clocks.wall)
        pairing = PairingService(
            self.ident,
            self.access,
            tokens,
            code_ttl_s=600,
            clock=self.clocks.wall,
            monotonic=self.clocks.mono,
        )
        await pairing.start()
        return pairing, tokens


async def make() -> tuple[PairingService, TokenService, MemoryAccessStore, Clocks]:
    shared = Shared()
    pairing, tokens = await shared.instance()
    return pairing, tokens, shared.access, shared.clocks


async def test_the_code_is_8_unambiguous_characters_valid_10_minutes() -> None:
    pairing, _, _, clocks = await make()
    code = await pairing.current_code()
    assert code is not None
    assert len(code.code) == 8 and set(code.code) <= set(ALPHABET)
    assert not set(ALPHABET) & set("01IOL")
    assert code.expires_ms == clocks.ms + 600_000
    assert code.display == f"{code.code[:4]}-{code.code[4:]}"
    clocks.advance(599)
    assert await pairing.current_code() == code
    clocks.advance(1)
    fresh = await pairing.current_code()
    assert fresh is not None and fresh.code != code.code


async def test_claim_pairs_once_and_gives_a_server_token() -> None:
    pairing, tokens, _, _ = await make()
    code = await pairing.current_code()
    assert code is not None
    result = await pairing.claim(code.display.lower(), "acc-7", "10.0.0.1")
    assert result.pairing.account_id == "acc-7" and result.token.scope.value == "server"
    assert pairing.paired and await pairing.current_code() is None
    with pytest.raises(AlreadyPairedError):
        await pairing.claim(code.code, "acc-8")
    old = await pairing.unpair()
    assert old.token_id == result.token.id
    assert await tokens.list() == []  # its token is revoked
    with pytest.raises(NotPairedError):
        await pairing.unpair()
    assert await pairing.current_code() is not None  # a new code to pair again


async def test_an_expired_code_is_told_apart_from_a_wrong_one() -> None:
    pairing, _, _, clocks = await make()
    code = await pairing.current_code()
    assert code is not None
    clocks.advance(601)
    with pytest.raises(ExpiredCodeError):
        await pairing.claim(code.code, "acc")
    with pytest.raises(InvalidCodeError):
        await pairing.claim("ZZZZZZZZ" if code.code != "ZZZZZZZZ" else "YYYYYYYY", "acc")
    status = await pairing.status()
    assert not pairing.paired and status.failed_claims == 2


async def test_five_wrong_codes_rate_limit_that_client_until_the_window_frees() -> None:
    pairing, _, access, clocks = await make()
    code = await pairing.current_code()
    assert code is not None
    for _ in range(5):
        with pytest.raises(InvalidCodeError):
            await pairing.claim("22222222", "acc", "10.0.0.9")
        clocks.advance(1)
    with pytest.raises(RateLimitedError) as limited:
        await pairing.claim(code.code, "acc", "10.0.0.9")  # even the right code
    assert 1 <= limited.value.retry_after_s <= 60
    result = await pairing.claim(code.code, "acc", "10.0.0.10")  # another client is fine
    assert result.pairing.account_id == "acc"
    assert (pairing.failed_claims, pairing.rate_limited) == (5, 1)
    await pairing.stop()  # the counters are added to the store now and then, and at stop
    counts = await access.counts()
    assert (counts["pairing.failed_claims"], counts["pairing.rate_limited"]) == (5, 1)


async def test_many_clients_together_never_lock_out_a_clean_one() -> None:
    """No fleet-wide limit: 100 wrong codes from 100 addresses leave the owner's claim alone."""
    pairing, _, _, _ = await make()
    for n in range(100):
        with pytest.raises(InvalidCodeError):
            await pairing.claim("22222222", f"acc-{n}", f"10.0.1.{n}")
    code = await pairing.current_code()
    assert code is not None
    assert (await pairing.claim(code.code, "owner", "10.0.2.1")).pairing.account_id == "owner"


async def test_an_account_stops_clients_that_failed_for_it_but_not_a_clean_one() -> None:
    pairing, _, _, clocks = await make()
    for n in range(20):  # 20 addresses, one wrong code each, for one account: its limit
        with pytest.raises(InvalidCodeError):
            await pairing.claim("22222222", "victim", f"10.0.3.{n}")
    with pytest.raises(RateLimitedError):
        await pairing.claim("22222222", "victim", "10.0.3.0")  # failed before: stopped
    with pytest.raises(InvalidCodeError):
        await pairing.claim("22222222", "other", "10.0.3.0")  # another account: its try
    with pytest.raises(InvalidCodeError):
        await pairing.claim("22222222", "victim", "10.0.4.1")  # a clean address: its try
    code = await pairing.current_code()
    assert code is not None
    assert (await pairing.claim(code.code, "victim", "10.0.4.2")).pairing.account_id == "victim"
    clocks.advance(61)
    assert pairing.accounts.count("victim") == 0


async def test_ipv6_clients_are_limited_by_their_64_network() -> None:
    pairing, _, _, _ = await make()
    for n in range(5):  # five addresses of one /64: one client
        with pytest.raises(InvalidCodeError):
            await pairing.claim("22222222", "acc", f"2001:db8:1:2::{n + 1}")
    with pytest.raises(RateLimitedError):
        await pairing.claim("22222222", "acc", "2001:db8:1:2:ffff::9")
    with pytest.raises(InvalidCodeError):
        await pairing.claim("22222222", "acc2", "2001:db8:1:3::1")  # another /64


async def test_a_flood_of_wrong_codes_writes_the_counters_only_now_and_then() -> None:
    pairing, _, access, clocks = await make()
    writes = 0
    add_counts = access.add_counts

    async def counting(counts: Mapping[str, int]) -> None:
        nonlocal writes
        writes += 1
        await add_counts(counts)

    access.add_counts = counting  # type: ignore[method-assign]
    for n in range(200):
        with pytest.raises(InvalidCodeError):
            await pairing.claim("22222222", f"a{n}", f"10.1.{n // 250}.{n % 250}")
    assert writes == 1  # the first, then at most every 10 s
    clocks.advance(10)
    with pytest.raises(InvalidCodeError):
        await pairing.claim("22222222", "late", "10.2.0.1")
    assert writes == 2
    await pairing.stop()
    assert (await access.counts())["pairing.failed_claims"] == 201


def test_people_may_type_the_code_with_spaces_dashes_or_lower_case() -> None:
    assert normalize_code(" 7kq3-m9xd ") == "7KQ3M9XD"


async def test_a_code_shown_by_one_instance_pairs_through_another() -> None:
    shared = Shared()
    first, _ = await shared.instance()
    second, _ = await shared.instance()
    code = await first.current_code()
    assert code is not None
    other = await second.current_code()  # the second shows its own; both are good
    assert other is not None and other.code != code.code
    assert await first.current_code() == code  # the first keeps showing its own
    assert code.code not in repr(await shared.access.pairing_codes())  # hashed
    await first.stop()  # the first instance is gone; its code lives on in the store
    result = await second.claim(code.display, "acc-1", "10.0.0.1")
    assert result.pairing.account_id == "acc-1"
    assert await first.current_code() is None  # paired: every instance sees it
    assert await shared.access.pairing_codes() == []  # single use: every code is gone
    with pytest.raises(AlreadyPairedError):
        await first.claim(other.code, "acc-2")


async def test_wrong_codes_are_limited_per_instance_and_counted_across_all() -> None:
    """Limits live in each instance's memory (docs/scale-out.md: N instances, N times the
    rate per address); the counts of refused claims add up in the store."""
    shared = Shared()
    instances = [(await shared.instance())[0] for _ in range(3)]
    code = await instances[0].current_code()
    assert code is not None
    for _ in range(5):
        with pytest.raises(InvalidCodeError):
            await instances[0].claim("22222222", "acc", "10.0.0.9")
    with pytest.raises(RateLimitedError):
        await instances[0].claim(code.code, "acc", "10.0.0.9")
    with pytest.raises(InvalidCodeError):  # another instance has its own count
        await instances[1].claim("22222222", "acc", "10.0.0.9")
    await instances[0].stop()
    assert (await instances[1].status()).failed_claims == 6


async def test_an_expired_code_of_another_instance_is_told_apart() -> None:
    shared = Shared()
    first, _ = await shared.instance()
    second, _ = await shared.instance()
    code = await first.current_code()
    assert code is not None
    shared.clocks.advance(601)
    with pytest.raises(ExpiredCodeError):
        await second.claim(code.code, "acc")
