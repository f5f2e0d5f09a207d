"""The claim secret's rotation record in a cluster: two provisioning services on one store
behave as two gateway instances whose authority shares the claim secrets (as the RabbitMQ
one does). Every write of the record is a compare-and-set: ending the overlap on one
instance while another rotates must not undo the rotation (docs/scale-out.md)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from planty_broker.ports.device_authority import DesiredAccess
from planty_broker.ports.memory_authority import MemoryDeviceAuthority
from planty_broker.services.bus import Bus
from planty_broker.services.credentials.events import EventRecorder
from planty_broker.services.credentials.provisioning import ProvisioningError, ProvisioningService
from planty_broker.storage.memory import MemoryStore
from planty_broker.storage.memory_access import MemoryAccessStore

KEY = "provisioning.claim_rotation"


class SharingAuthority(MemoryDeviceAuthority):
    """The memory fake with the claim-secret calls of `RabbitAuthority`."""

    shares_claim_secrets = True

    def __init__(self) -> None:
        super().__init__(claim_secret=secrets.token_hex(8))
        self.previous_claim_secret: str | None = None

    def rotate_claim_secret(self) -> str:
        new = secrets.token_hex(8)
        self.set_claim_secrets(new, self._claim_secret)
        return new

    def end_claim_overlap(self) -> None:
        if self._claim_secret:
            self.set_claim_secrets(self._claim_secret, None)

    def set_claim_secrets(self, current: str, previous: str | None) -> None:
        self._claim_secret, self.previous_claim_secret = current, previous


class RacingStore(MemoryStore):
    """Runs `between` once, right before the next compare-and-set of the record: another
    instance writing between this one's read and its write."""

    between: Callable[[], Awaitable[None]] | None = None

    async def replace_meta(self, key: str, expected: Any | None, value: Any) -> bool:
        step, self.between = self.between, None
        if step is not None:
            await step()
        return await super().replace_meta(key, expected, value)


class _Creds:
    def __init__(self) -> None:
        self.extra_accounts: list[object] = []


def instance(store: MemoryStore, now: list[int]) -> tuple[ProvisioningService, SharingAuthority]:
    authority = SharingAuthority()
    prov = ProvisioningService(
        _Creds(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        MemoryAccessStore(),
        EventRecorder(Bus()),
        authority=authority,
        prefix="planty/v1",
        slots=2,
        meta=store,
        clock=lambda: now[0],
    )
    authority.set_source(lambda: DesiredAccess(accounts=tuple(prov.accounts())))
    return prov, authority


async def test_the_first_instance_puts_its_secret_and_the_second_adopts_it() -> None:
    now = [1_000_000]
    async with MemoryStore() as store:
        (a, auth_a), (b, auth_b) = instance(store, now), instance(store, now)
        await a.refresh()
        await b.refresh()
        assert auth_b.claim_secret == auth_a.claim_secret
        assert (await store.get_meta(KEY))["secret"] == auth_a.claim_secret


async def test_an_end_of_the_overlap_racing_a_rotation_leaves_the_rotation_and_says_so() -> None:
    now = [1_000_000]
    async with RacingStore() as store:
        (a, auth_a), (b, auth_b) = instance(store, now), instance(store, now)
        await a.refresh()
        await b.refresh()
        await a.rotate_claim_secret(3600)  # an overlap, seen by both
        await b.refresh()
        assert a.previous_claim is not None and b.previous_claim is not None

        async def b_ends_and_rotates() -> None:
            await b.end_claim_overlap()
            await b.rotate_claim_secret(600)

        store.between = b_ends_and_rotates  # while a ends the overlap it read
        with pytest.raises(ProvisioningError, match="rotated the claim secret at the same"):
            await a.end_claim_overlap()
        record = await store.get_meta(KEY)
        assert record["secret"] == auth_b.claim_secret  # b's rotation stands
        assert record["previous_until_ms"] == now[0] + 600_000  # with its overlap
        assert (auth_a.claim_secret, auth_a.previous_claim_secret) == (
            auth_b.claim_secret,
            auth_b.previous_claim_secret,
        )
        assert a.first_slot == b.first_slot and a.previous_claim == b.previous_claim


async def test_two_ends_of_the_same_overlap_both_succeed() -> None:
    now = [1_000_000]
    async with RacingStore() as store:
        (a, auth_a), (b, _) = instance(store, now), instance(store, now)
        await a.refresh()
        await b.refresh()
        await a.rotate_claim_secret(3600)
        await b.refresh()
        store.between = b.end_claim_overlap
        await a.end_claim_overlap()  # the store holds b's end: what a asked for
        record = await store.get_meta(KEY)
        assert record["previous_until_ms"] is None and record["secret"] == auth_a.claim_secret
        assert a.previous_claim is None and auth_a.previous_claim_secret is None


async def test_the_overlap_running_out_on_every_instance_ends_it_once() -> None:
    now = [1_000_000]
    async with MemoryStore() as store:
        (a, _), (b, _) = instance(store, now), instance(store, now)
        await a.refresh()
        await b.refresh()
        await a.rotate_claim_secret(60)
        await b.refresh()
        now[0] += 60_000
        await a.end_claim_overlap()  # what each instance's refresher does when it ran out
        await b.end_claim_overlap()
        record = await store.get_meta(KEY)
        assert record["previous_until_ms"] is None and record["previous_secret"] is None
