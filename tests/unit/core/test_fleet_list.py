"""The fleet list's pages: stable id order, search by id or name, presence filter, and
keyset cursors that never shift when devices are added or removed between pages."""

from __future__ import annotations

import pytest

from planty_broker.domain.models import PresenceState
from planty_broker.northbound.api.devices import decode_cursor, encode_cursor
from planty_broker.services.bus import Bus
from planty_broker.services.fleet_list import select
from planty_broker.services.registry import DeviceRegistry
from planty_broker.storage.memory import MemoryStore


@pytest.fixture
async def registry() -> DeviceRegistry:
    store = MemoryStore()
    await store.open()
    reg = DeviceRegistry(store, Bus(), lambda token: "$7$101$x$y")
    await reg.load()
    for n in (7, 3, 11, 1, 5, 9, 2, 8, 4, 10, 6, 12):
        await reg.add(f"pot-{n:02d}", "Kitchen basil" if n in (4, 9) else None)
    return reg


ONLINE = {"pot-02", "pot-09", "pot-12"}


def state_of(device_id: str) -> PresenceState:
    if device_id == "pot-05":
        return PresenceState.LATE  # late counts as online
    return PresenceState.ONLINE if device_id in ONLINE else PresenceState.OFFLINE


def ids(page: object) -> list[str]:
    return [d.id for d in page.devices]  # type: ignore[attr-defined]


async def test_pages_walk_the_fleet_in_id_order_once(registry: DeviceRegistry) -> None:
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = select(registry, state_of, after=after, limit=5)
        pages += 1
        assert page.total == 12 and page.online == 4
        seen += ids(page)
        if page.next_after is None:
            break
        after = page.next_after
    assert pages == 3
    assert seen == sorted(seen) == [f"pot-{n:02d}" for n in range(1, 13)]


async def test_a_device_added_or_removed_between_pages_shifts_nothing(
    registry: DeviceRegistry,
) -> None:
    first = select(registry, state_of, limit=5)
    assert ids(first) == ["pot-01", "pot-02", "pot-03", "pot-04", "pot-05"]
    await registry.add("pot-00")  # before the cursor: not on a later page
    await registry.remove("pot-03")  # already shown
    await registry.add("pot-07a")  # after the cursor: shown in its place
    second = select(registry, state_of, after=first.next_after, limit=5)
    assert ids(second) == ["pot-06", "pot-07", "pot-07a", "pot-08", "pot-09"]
    assert second.has_prev and second.prev_after == ""  # pot-00..pot-05: the first page


async def test_search_by_id_or_name_and_presence_filter(registry: DeviceRegistry) -> None:
    assert ids(select(registry, state_of, q="pot-1")) == ["pot-10", "pot-11", "pot-12"]
    assert ids(select(registry, state_of, q="  BASIL ")) == ["pot-04", "pot-09"]
    online = select(registry, state_of, state="online")
    assert ids(online) == ["pot-02", "pot-05", "pot-09", "pot-12"]
    offline = select(registry, state_of, state="offline")
    assert offline.total == 8 and offline.online == 0
    both = select(registry, state_of, q="basil", state="online")
    assert ids(both) == ["pot-09"] and both.total == 1
    assert select(registry, state_of, q="nothing-like-it").total == 0


async def test_prev_cursor_leads_back_to_the_page_before(registry: DeviceRegistry) -> None:
    first = select(registry, state_of, limit=4)
    second = select(registry, state_of, after=first.next_after, limit=4)
    third = select(registry, state_of, after=second.next_after, limit=4)
    back = select(registry, state_of, after=third.prev_after, limit=4)
    assert ids(back) == ids(second)
    assert not first.has_prev
    assert select(registry, state_of, after=second.prev_after, limit=4).devices == first.devices


def test_cursors_are_opaque_and_only_ours_are_taken() -> None:
    for after in ("", "pot-01", "a" * 64):
        assert decode_cursor(encode_cursor(after)) == after
    for bad in ("%%%", "bm9wZQ", encode_cursor("x")[:-2] + "!!", "ZDE6Li4vZXRj/"):
        with pytest.raises(ValueError, match="cursor"):
            decode_cursor(bad)
