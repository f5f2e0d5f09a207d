"""The claim window is one shared state: two provisioning services on one store behave as
two gateway instances (scale-out), each applying the claim accounts when it changes."""

from __future__ import annotations

import pytest

from planty_broker.ports.device_authority import DesiredAccess
from planty_broker.ports.memory_authority import MemoryDeviceAuthority
from planty_broker.services.bus import Bus
from planty_broker.services.credentials.events import EventRecorder
from planty_broker.services.credentials.provisioning import ProvisioningError, ProvisioningService
from planty_broker.storage.memory_access import MemoryAccessStore


class _Creds:
    def __init__(self) -> None:
        self.extra_accounts: list[object] = []


def instance(
    shared: MemoryAccessStore, now: list[int]
) -> tuple[ProvisioningService, MemoryDeviceAuthority]:
    authority = MemoryDeviceAuthority(claim_secret="claim-secret")
    prov = ProvisioningService(
        _Creds(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        shared,
        EventRecorder(Bus()),
        authority=authority,
        prefix="planty/v1",
        slots=2,
        clock=lambda: now[0],
    )
    authority.set_source(lambda: _desired(prov))
    return prov, authority


def _desired(prov: ProvisioningService) -> DesiredAccess:
    return DesiredAccess(accounts=tuple(prov.accounts()))


def slots_open(authority: MemoryDeviceAuthority) -> bool:
    return authority.accepts("planty-claim-0", "claim-secret")


async def test_a_window_opened_on_one_instance_is_open_on_the_other_and_closes_once() -> None:
    shared, now = MemoryAccessStore(), [1_000_000]
    (a, auth_a), (b, auth_b) = instance(shared, now), instance(shared, now)
    await a.refresh()
    await b.refresh()
    until = await a.open_window(60)
    assert until == now[0] + 60_000 and a.window_open and slots_open(auth_a)
    assert not b.window_open  # until it re-reads (every second)
    await b.refresh()
    assert b.window_open and b.window_until_ms == until and slots_open(auth_b)
    applies = auth_b.applies
    await b.refresh()
    assert auth_b.applies == applies  # nothing changed: nothing applied
    now[0] += 60_000
    await b.refresh()  # b sees it run out first and marks it closed
    await a.refresh()
    window = await shared.get_claim_window()
    assert window is not None and window.closed_ms == until
    assert not slots_open(auth_a) and not slots_open(auth_b)


async def test_closing_through_one_instance_closes_it_for_the_other() -> None:
    shared, now = MemoryAccessStore(), [5_000]
    (a, _), (b, auth_b) = instance(shared, now), instance(shared, now)
    await a.open_window(300)
    await b.refresh()
    assert slots_open(auth_b)
    await b.close_window()
    await a.refresh()
    assert not a.window_open and not slots_open(auth_b)
    with pytest.raises(ProvisioningError):
        await a.open_window(0)
    assert (await a.counts()) == {
        "claims": 0,
        "refused": 0,
        "refused_by": {},
        "window_claims": None,  # closed
        "window_max_claims": None,
    }


async def test_the_claim_count_and_its_cap_are_one_for_every_instance() -> None:
    shared, now = MemoryAccessStore(), [5_000]
    (a, _), (b, _) = instance(shared, now), instance(shared, now)
    await a.open_window(60, max_claims=2)
    await b.refresh()
    assert b.window_claims == (0, 2)
    assert await shared.take_claim(now[0]) is not None  # one claim through each
    assert await shared.take_claim(now[0]) is not None
    assert await shared.take_claim(now[0]) is None  # the cap holds across instances
    await b.refresh()
    counts = await b.counts()
    assert (counts["window_claims"], counts["window_max_claims"]) == (2, 2)
    # Opening again (also while open: extending) starts a fresh count, as on one instance.
    await b.open_window(600)
    await a.refresh()
    assert a.window_claims == (0, 50) and a.window_until_ms == 605_000
    await a.close_window()
    await b.refresh()
    assert (await b.counts())["window_claims"] is None  # closed


async def test_a_claim_retried_while_its_first_try_is_answered_gets_the_same_reply() -> None:
    """Under load a device's claim reply can come after its attempt timed out; the retry (same
    serial and `req`, another slot) must get that answer, not `already_claimed`."""
    import asyncio

    from planty_broker.protocol import ClaimReply, ClaimRequest, decode_claim_reply
    from planty_broker.protocol import encode_provisioning as encode

    prov, _authority = instance(MemoryAccessStore(), [0])
    prov._grace_s = 0
    release = asyncio.Event()
    claims = 0
    sent: list[tuple[str, ClaimReply]] = []

    async def slow_claim(_slot: str, req: ClaimRequest) -> ClaimReply:
        nonlocal claims
        claims += 1
        await release.wait()  # the registration, the reload: slow under load
        return ClaimReply(req=req.req, ok=True, id="sn-1", token="t0k3n")

    async def send(slot: str, raw: bytes) -> None:
        sent.append((slot, decode_claim_reply(raw)))

    async def cut(_slot: str) -> None:
        return None

    prov._claim = slow_claim  # type: ignore[method-assign]
    prov._send = send  # type: ignore[method-assign]
    prov._cut = cut  # type: ignore[method-assign]
    raw = encode(ClaimRequest(req="r-1", serial="SN-1"))
    first = asyncio.ensure_future(prov._serve("planty-claim-0", raw))
    await asyncio.sleep(0)
    retry = asyncio.ensure_future(prov._serve("planty-claim-1", raw))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(first, retry)
    assert claims == 1  # the retry did not claim again
    assert sorted(slot for slot, _ in sent) == ["planty-claim-0", "planty-claim-1"]
    assert {(r.ok, r.id, r.token) for _, r in sent} == {(True, "sn-1", "t0k3n")}
