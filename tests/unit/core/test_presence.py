"""Presence rules on a fake store: transitions, causes, silence bound, restart without fake outages."""

from __future__ import annotations

import pytest

from planty_broker.domain.models import (
    DeviceRecord,
    PresenceCause,
    PresenceState,
    PresenceTransition,
)
from planty_broker.services.bus import Bus, PresenceChanged
from planty_broker.services.presence import HEARTBEAT_KEY, RESTART_GRACE_S, PresenceService
from planty_broker.services.registry import DeviceRegistry
from planty_broker.storage.memory import MemoryStore

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def make(
    store: MemoryStore | None = None, ids: tuple[str, ...] = ("dev-a",)
) -> tuple[PresenceService, MemoryStore, list[PresenceChanged]]:
    if store is None:
        store = MemoryStore()
        await store.open()
        for i in ids:
            await store.add_device(DeviceRecord(id=i, created_at_ms=0, token_hash="h"))
    bus = Bus()
    events: list[PresenceChanged] = []
    bus.subscribe(PresenceChanged, events.append)
    reg = DeviceRegistry(store, bus, lambda t: t)
    await reg.load()
    p = PresenceService(store, bus, reg, keepalive_s=60, default_interval_s=60, check_every_s=3600)
    await p.start()
    return p, store, events


async def test_status_will_silence_and_message() -> None:
    p, store, events = await make()
    t0 = p._started_ms
    p.on_status("dev-a", True, 10, t0 + 1)
    assert p.get("dev-a").state is PresenceState.ONLINE
    p.check(t0 + 1 + 15_001)  # 1.5 intervals
    assert p.get("dev-a").state is PresenceState.LATE
    p.check(t0 + 1 + 90_001)  # bound = max(3 x 10, 1.5 x 60) = 90 s
    assert (p.get("dev-a").state, p.get("dev-a").cause) == (
        PresenceState.OFFLINE,
        PresenceCause.SILENCE,
    )
    p.on_activity("dev-a", t0 + 100_000)
    assert (p.get("dev-a").state, p.get("dev-a").cause) == (
        PresenceState.ONLINE,
        PresenceCause.MESSAGE,
    )
    p.on_status("dev-a", False, None, t0 + 100_500)
    assert (p.get("dev-a").state, p.get("dev-a").cause) == (
        PresenceState.OFFLINE,
        PresenceCause.LAST_WILL,
    )
    await p.flush()
    hist = await store.presence_history("dev-a", None, None)
    assert [h.state for h in hist][-5:] == [
        PresenceState.ONLINE,
        PresenceState.LATE,
        PresenceState.OFFLINE,
        PresenceState.ONLINE,
        PresenceState.OFFLINE,
    ]
    assert [e.previous for e in events][-4:] == ["online", "late", "offline", "online"]


async def test_silence_just_under_the_bound_stays() -> None:
    p, _, _ = await make()
    t0 = p._started_ms
    p.on_status("dev-a", True, 60, t0)
    p.check(t0 + 180_000)  # exactly 3 x interval: not yet
    assert p.get("dev-a").state is PresenceState.LATE
    p.check(t0 + 180_001)
    assert p.get("dev-a").state is PresenceState.OFFLINE


async def test_restart_never_fakes_everyone_online_or_an_outage() -> None:
    store = MemoryStore()
    await store.open()
    for i in ("dev-on", "dev-off", "dev-new", "dev-gone"):
        await store.add_device(DeviceRecord(id=i, created_at_ms=0, token_hash="h"))
    await store.append_presence(
        [
            PresenceTransition("dev-on", PresenceState.ONLINE, 1000, PresenceCause.STATUS_ONLINE),
            PresenceTransition("dev-off", PresenceState.OFFLINE, 1000, PresenceCause.LAST_WILL),
            PresenceTransition(
                "dev-gone", PresenceState.ONLINE, 1000, PresenceCause.STATUS_ONLINE
            ),
        ]
    )
    await store.set_meta(HEARTBEAT_KEY, 5000)
    p, store, _ = await make(store)
    # the one that was online is unknown from the last heartbeat on, not online, not offline
    assert p.get("dev-on").state is PresenceState.UNKNOWN
    hist = await store.presence_history("dev-on", None, None)
    assert hist[-1] == PresenceTransition(
        "dev-on", PresenceState.UNKNOWN, 5000, PresenceCause.GATEWAY_RESTART
    )
    assert p.get("dev-off").state is PresenceState.OFFLINE
    # never heard from: never seen (not offline, not unknown), and nothing stored for it
    assert (p.get("dev-new").state, p.get("dev-new").cause) == (
        PresenceState.NEVER_SEEN,
        PresenceCause.REGISTERED,
    )
    # its retained status arrives: online again
    p.on_status("dev-on", True, 60, p._started_ms + 10)
    assert p.get("dev-on").state is PresenceState.ONLINE
    # no retained status within the grace period for one seen before: offline (gateway_restart)
    p.check(p._started_ms + int(RESTART_GRACE_S * 1000) + 1)
    assert (p.get("dev-gone").state, p.get("dev-gone").cause) == (
        PresenceState.OFFLINE,
        PresenceCause.GATEWAY_RESTART,
    )
    assert p.get("dev-new").state is PresenceState.NEVER_SEEN
    await p.flush()
    assert await store.presence_history("dev-new", None, None) == []
    assert p.online_count() == 1


async def test_a_clean_goodbye_is_a_clean_offline_and_the_will_is_last_will() -> None:
    p, _, _ = await make()
    t0 = p._started_ms
    assert p.get("dev-a").state is PresenceState.NEVER_SEEN  # registered, never heard from
    p.on_status("dev-a", True, 60, t0)
    p.on_status("dev-a", False, None, t0 + 10, clean=True)
    assert (p.get("dev-a").state, p.get("dev-a").cause) == (
        PresenceState.OFFLINE,
        PresenceCause.SHUTDOWN,
    )
    p.on_status("dev-a", True, 60, t0 + 20)
    p.on_status("dev-a", False, None, t0 + 30)
    assert p.get("dev-a").cause is PresenceCause.LAST_WILL


async def test_transitions_held_while_the_store_is_down_are_bounded_and_counted() -> None:
    p, store, _ = await make()
    p._max_pending = 100
    t0 = p._started_ms
    await store.close()  # the store is down: nothing can be written
    for i in range(1_000):  # a flapping device
        p.on_status("dev-a", i % 2 == 0, 10, t0 + i)
        if i % 50 == 0:
            with pytest.raises(Exception, match="not open"):
                await p.flush()
    assert len(p._pending) <= 100
    assert p.dropped >= 900 and p.dropped + len(p._pending) == 1_000
    await store.open()
    await p.flush()
    last = await store.last_presence()
    assert last["dev-a"].at_ms == t0 + 999  # the newest survive: the state is right


async def test_transitions_the_store_refuses_for_good_are_set_aside_never_retried_forever() -> None:
    from planty_broker.ports.store import StoreRejectedError

    p, store, _ = await make(ids=("dev-a", "dev-b"))
    real = store.append_presence

    async def refusing(transitions):  # type: ignore[no-untyped-def]
        if any(t.device_id == "dev-b" for t in transitions):
            raise StoreRejectedError("value out of range")
        await real(transitions)

    store.append_presence = refusing  # type: ignore[method-assign]
    t0 = p._started_ms
    p.on_status("dev-a", True, 10, t0 + 1)
    p.on_status("dev-b", True, 10, t0 + 2)
    await p.flush()  # no exception, nothing held
    assert p._pending == [] and p.refused == 1
    assert (await store.last_presence())["dev-a"].at_ms == t0 + 1
