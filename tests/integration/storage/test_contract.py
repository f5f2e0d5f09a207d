"""The `Store` contract, run identically on MemoryStore, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from planty_broker.domain.models import (
    DeviceRecord,
    PresenceCause,
    PresenceState,
    PresenceTransition,
    Reading,
)
from planty_broker.ports.store import (
    DeviceExistsError,
    Store,
    StoreRejectedError,
    StoreUnavailableError,
)
from tests.integration.storage.conftest import StoreFactory, empty_if_shared


def device(device_id: str, **kw: Any) -> DeviceRecord:
    base: dict[str, Any] = {"created_at_ms": 1_700_000_000_000, "token_hash": f"hash-{device_id}"}
    return DeviceRecord(id=device_id, **(base | kw))


def reading(device_id: str, seq: int, ts_ms: int, **values: float) -> Reading:
    return Reading(
        device_id=device_id,
        seq=seq,
        ts_ms=ts_ms,
        received_ms=ts_ms + 7,
        values=values or {"t": 1.0},
    )


def online(device_id: str, at_ms: int) -> PresenceTransition:
    return PresenceTransition(device_id, PresenceState.ONLINE, at_ms, PresenceCause.STATUS_ONLINE)


def offline(
    device_id: str, at_ms: int, cause: PresenceCause = PresenceCause.LAST_WILL
) -> PresenceTransition:
    return PresenceTransition(device_id, PresenceState.OFFLINE, at_ms, cause)


FULL = device(
    "greenhouse-1",
    name="Greenhouse 1",
    sensors=("temperature", "soil_moisture", "light"),
    actuators=("pump", "lamp"),
    fw="1.4.2",
    interval_s=30.0,
    attrs={"site": "north", "limits": {"pump_s": 120, "ratio": 0.25}, "tags": ["a", "b"]},
)


# devices --------------------------------------------------------------------


async def test_added_device_comes_back_with_every_field(store: Store) -> None:
    await store.add_device(FULL)
    assert await store.get_device("greenhouse-1") == FULL
    assert await store.get_device("nope") is None


async def test_minimal_device_keeps_its_defaults(store: Store) -> None:
    await store.add_device(device("bare"))
    assert await store.get_device("bare") == device("bare")


async def test_adding_a_taken_id_raises_and_keeps_the_first(store: Store) -> None:
    await store.add_device(FULL)
    with pytest.raises(DeviceExistsError, match="greenhouse-1"):
        await store.add_device(device("greenhouse-1", token_hash="other"))
    stored = await store.get_device("greenhouse-1")
    assert stored is not None
    assert stored.token_hash == FULL.token_hash


async def test_list_devices_returns_all_sorted_by_id(store: Store) -> None:
    for i in ("b-2", "a-10", "A-1", "c"):
        await store.add_device(device(i))
    assert [d.id for d in await store.list_devices()] == ["A-1", "a-10", "b-2", "c"]


async def test_update_replaces_the_record(store: Store) -> None:
    await store.add_device(FULL)
    changed = device("greenhouse-1", token_hash="rotated", fw="2.0.0", sensors=("light",))
    await store.update_device(changed)
    assert await store.get_device("greenhouse-1") == changed


async def test_update_of_a_removed_device_does_not_bring_it_back(store: Store) -> None:
    await store.update_device(FULL)
    assert await store.get_device(FULL.id) is None
    assert await store.list_devices() == []


async def test_a_patch_writes_only_its_fields_in_any_order(store: Store) -> None:
    """Two writers of different fields never undo each other (a revoked token's hash came
    back when a status rewrote the whole row, issue 13)."""
    await store.add_device(FULL)
    await store.patch_device(FULL.id, {"token_hash": ""})
    await store.patch_device(FULL.id, {"sensors": ("light",), "fw": "3.0"})
    stored = await store.get_device(FULL.id)
    assert stored == dataclasses.replace(FULL, token_hash="", sensors=("light",), fw="3.0")
    await store.patch_device("never-there", {"fw": "1"})
    assert await store.get_device("never-there") is None


async def test_patches_of_many_devices_write_only_their_fields_in_one_call(store: Store) -> None:
    """Statuses are stored a batch at a time (issue 17): each patch writes only what it
    names (never the token hash it does not name, issue 13), later patches of a device win,
    a removed device stays removed, a patch naming nothing writes nothing."""
    await store.add_device(FULL)
    await store.add_device(device("bare"))
    await store.add_device(device("other", fw="0.9"))
    await store.patch_device(FULL.id, {"token_hash": ""})  # a revocation, written first
    await store.patch_devices(
        [
            (FULL.id, {"sensors": ("light",), "fw": "3.0"}),
            ("bare", {"sensors": ("t", "h"), "actuators": ("pump",), "interval_s": 15.0}),
            ("never-there", {"fw": "1"}),
            ("bare", {"fw": "2.1", "interval_s": 30.0}),
            ("other", {}),
        ]
    )
    assert await store.get_device(FULL.id) == dataclasses.replace(
        FULL, token_hash="", sensors=("light",), fw="3.0"
    )
    assert await store.get_device("bare") == device(
        "bare", sensors=("t", "h"), actuators=("pump",), fw="2.1", interval_s=30.0
    )
    assert await store.get_device("other") == device("other", fw="0.9")
    assert await store.get_device("never-there") is None
    await store.patch_devices([])
    assert [d.id for d in await store.list_devices()] == ["bare", "greenhouse-1", "other"]


async def test_patches_of_many_devices_are_all_or_nothing(store: Store) -> None:
    """A patch the store refuses (a name it cannot encode) leaves every device of the call
    as it was: the status writer then bisects the batch down to the one it refuses."""
    await store.add_device(device("a"))
    await store.add_device(device("b"))
    with pytest.raises(StoreRejectedError):
        await store.patch_devices([("a", {"fw": "2.0"}), ("b", {"sensors": ("bad\ud800",)})])
    assert await store.get_device("a") == device("a")
    assert await store.get_device("b") == device("b")


async def test_remove_deletes_the_device_and_all_its_data(store: Store) -> None:
    await store.add_device(device("gone"))
    await store.add_device(device("kept"))
    await store.append_readings([reading("gone", 1, 100), reading("kept", 1, 100)])
    await store.append_presence([online("gone", 100), online("kept", 100)])

    assert await store.remove_device("gone") is True
    assert await store.remove_device("gone") is False

    assert await store.get_device("gone") is None
    assert await store.query_readings("gone", None, None, 10) == []
    assert await store.presence_history("gone", None, None) == []
    assert set(await store.latest_readings()) == {"kept"}
    assert set(await store.last_presence()) == {"kept"}
    # A device registered again under the same id starts empty.
    await store.add_device(device("gone"))
    assert await store.query_readings("gone", None, None, 10) == []


# readings -------------------------------------------------------------------


async def test_batch_is_stored_and_read_back_oldest_first(store: Store) -> None:
    await store.add_device(device("d"))
    batch = [reading("d", i, 1_000 + i, t=20.5 + i, soil=0.25) for i in range(50)]
    await store.append_readings(batch)
    assert await store.query_readings("d", None, None, 1000) == batch


async def test_query_bounds_are_inclusive_and_limit_keeps_the_newest(store: Store) -> None:
    await store.add_device(device("d"))
    await store.append_readings([reading("d", i, i * 10) for i in range(10)])  # ts 0..90

    def seqs(rs: list[Reading]) -> list[int]:
        return [r.seq for r in rs]

    assert seqs(await store.query_readings("d", 20, 50, 100)) == [2, 3, 4, 5]
    assert seqs(await store.query_readings("d", 65, None, 100)) == [7, 8, 9]
    assert seqs(await store.query_readings("d", None, 15, 100)) == [0, 1]
    assert seqs(await store.query_readings("d", None, None, 3)) == [7, 8, 9]
    assert seqs(await store.query_readings("d", 10, 60, 2)) == [5, 6]
    assert await store.query_readings("d", 91, None, 100) == []
    assert await store.query_readings("d", None, None, 0) == []


async def test_query_orders_by_device_time_and_keeps_arrival_order_on_ties(store: Store) -> None:
    await store.add_device(device("d"))
    await store.append_readings([reading("d", 1, 300), reading("d", 2, 100)])
    await store.append_readings([reading("d", 3, 200), reading("d", 4, 100), reading("d", 5, 300)])
    got = await store.query_readings("d", None, None, 100)
    assert [(r.ts_ms, r.seq) for r in got] == [(100, 2), (100, 4), (200, 3), (300, 1), (300, 5)]
    assert [r.seq for r in await store.query_readings("d", None, None, 1)] == [5]


async def test_readings_of_other_devices_are_not_returned(store: Store) -> None:
    await store.add_device(device("a"))
    await store.add_device(device("b"))
    await store.append_readings([reading("a", 1, 10), reading("b", 1, 10), reading("a", 2, 20)])
    assert [r.seq for r in await store.query_readings("a", None, None, 10)] == [1, 2]
    assert await store.query_readings("nobody", None, None, 10) == []


async def test_values_round_trip_exactly(store: Store) -> None:
    await store.add_device(device("d"))
    values: dict[str, float] = {
        "temperature": 21.0,
        "tiny": 1e-9,
        "neg": -3.5,
        "third": 1 / 3,
        "count": 7,
        "big": 2**53,
    }
    r = Reading(
        "d", seq=2**40, ts_ms=1_764_000_000_123, received_ms=1_764_000_000_456, values=values
    )
    await store.append_readings([r])
    (got,) = await store.query_readings("d", None, None, 1)
    assert got == r
    assert type(got.values["temperature"]) is float
    assert type(got.values["count"]) is int


async def test_latest_readings_is_the_newest_by_time_for_each_device(store: Store) -> None:
    for d in ("a", "b", "quiet"):
        await store.add_device(device(d))
    await store.append_readings([reading("a", 1, 500), reading("a", 2, 100), reading("b", 1, 50)])
    await store.append_readings([reading("b", 2, 60), reading("b", 3, 60)])
    latest = await store.latest_readings()
    assert set(latest) == {"a", "b"}
    assert latest["a"].seq == 1  # arrived first but has the newest device time
    assert latest["b"].seq == 3  # same time as seq 2: the later arrival wins


async def test_readings_of_unknown_devices_are_dropped_and_the_rest_kept(store: Store) -> None:
    await store.add_device(device("known"))
    await store.append_readings(
        [reading("known", 1, 10), reading("removed-meanwhile", 1, 10), reading("known", 2, 20)]
    )
    assert [r.seq for r in await store.query_readings("known", None, None, 10)] == [1, 2]
    assert await store.query_readings("removed-meanwhile", None, None, 10) == []
    assert set(await store.latest_readings()) == {"known"}


async def test_empty_batches_are_accepted(store: Store) -> None:
    await store.append_readings([])
    await store.append_presence([])
    assert await store.latest_readings() == {}


async def test_concurrent_writers_all_land(store: Store) -> None:
    devices = [f"dev-{i}" for i in range(10)]
    for d in devices:
        await store.add_device(device(d))

    async def writer(d: str) -> None:
        for b in range(5):
            await store.append_readings([reading(d, b * 20 + i, b * 20 + i) for i in range(20)])

    await asyncio.gather(
        *(writer(d) for d in devices), store.list_devices(), store.latest_readings()
    )
    for d in devices:
        got = await store.query_readings(d, None, None, 1000)
        assert [r.seq for r in got] == list(range(100))


# presence -------------------------------------------------------------------


async def test_presence_history_and_last_transition(store: Store) -> None:
    for d in ("a", "b"):
        await store.add_device(device(d))
    await store.append_presence(
        [online("a", 100), offline("a", 200), online("b", 150), online("a", 300)]
    )
    await store.append_presence([offline("b", 400, PresenceCause.SILENCE)])
    assert await store.presence_history("a", None, None) == [
        online("a", 100),
        offline("a", 200),
        online("a", 300),
    ]
    assert await store.presence_history("a", 200, 300) == [offline("a", 200), online("a", 300)]
    assert await store.presence_history("a", 201, None) == [online("a", 300)]
    assert await store.presence_history("a", None, 199) == [online("a", 100)]
    assert await store.last_presence() == {
        "a": online("a", 300),
        "b": offline("b", 400, PresenceCause.SILENCE),
    }


async def test_last_presence_uses_the_transition_time_not_arrival(store: Store) -> None:
    await store.add_device(device("a"))
    await store.append_presence([online("a", 500)])
    await store.append_presence([offline("a", 400)])  # late write of an older event
    assert (await store.last_presence())["a"] == online("a", 500)
    assert [t.at_ms for t in await store.presence_history("a", None, None)] == [400, 500]


async def test_every_presence_state_and_cause_round_trips(store: Store) -> None:
    await store.add_device(device("a"))
    items = [
        PresenceTransition("a", state, i * 10 + j, cause)
        for i, state in enumerate(PresenceState)
        for j, cause in enumerate(PresenceCause)
    ]
    await store.append_presence(items)
    assert await store.presence_history("a", None, None) == items


async def test_presence_of_unknown_devices_is_dropped(store: Store) -> None:
    await store.add_device(device("a"))
    await store.append_presence([online("ghost", 1), online("a", 2)])
    assert await store.last_presence() == {"a": online("a", 2)}


# meta -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [{"n": 1, "nested": {"x": [1, 2.5, "s", None, True]}}, [1, 2], "text", 42, 0.5, True],
)
async def test_meta_stores_json_values(store: Store, value: Any) -> None:
    assert await store.get_meta("k") is None
    await store.set_meta("k", value)
    assert await store.get_meta("k") == value


async def test_meta_overwrites(store: Store) -> None:
    await store.set_meta("broker_id", "broker-1")
    await store.set_meta("counter", 1)
    await store.set_meta("broker_id", "broker-2")
    assert await store.get_meta("broker_id") == "broker-2"
    assert await store.get_meta("counter") == 1


async def test_replace_meta_is_a_compare_and_set_between_two_handles(
    store: Store, store_factory: StoreFactory
) -> None:
    """Two gateway instances on one store: of two writers that read the same value, the
    second one's replace fails and writes nothing (the claim-secret rotation record)."""
    other = store_factory()
    if other is not store:
        await other.open()
    try:
        assert await store.replace_meta("rot", None, {"v": 1}) is True
        assert await other.replace_meta("rot", None, {"v": 9}) is False  # already there
        seen = await other.get_meta("rot")
        assert await store.replace_meta("rot", seen, {"v": 2}) is True
        assert await other.replace_meta("rot", seen, {"v": 3}) is False  # it read too early
        assert await other.get_meta("rot") == {"v": 2}
        results = await asyncio.gather(
            store.replace_meta("rot", {"v": 2}, {"v": "a"}),
            other.replace_meta("rot", {"v": 2}, {"v": "b"}),
        )
        assert sorted(results) == [False, True]  # exactly one of two racing writers wins
        assert await store.get_meta("rot") == ({"v": "a"} if results[0] else {"v": "b"})
    finally:
        if other is not store:
            await other.close()


async def test_returned_values_are_copies(store: Store) -> None:
    await store.set_meta("k", {"list": [1]})
    got = await store.get_meta("k")
    got["list"].append(2)
    assert await store.get_meta("k") == {"list": [1]}


# lifecycle ------------------------------------------------------------------


async def test_data_survives_close_and_reopen(store_factory: StoreFactory) -> None:
    first = store_factory()
    async with first:
        await empty_if_shared(first)  # PostgreSQL: other tests' rows (left for their debugging)
        await first.add_device(FULL)
        await first.append_readings([reading(FULL.id, 1, 10), reading(FULL.id, 2, 20)])
        await first.append_presence([online(FULL.id, 5)])
        await first.set_meta("broker_id", "broker-x")
    second = store_factory()
    async with second:
        assert await second.get_device(FULL.id) == FULL
        assert [r.seq for r in await second.query_readings(FULL.id, None, None, 10)] == [1, 2]
        assert await second.last_presence() == {FULL.id: online(FULL.id, 5)}
        assert await second.get_meta("broker_id") == "broker-x"
        await second.remove_device(FULL.id)  # leave the shared database clean


async def test_calls_before_open_and_after_close_say_so(store_factory: StoreFactory) -> None:
    s = store_factory()
    with pytest.raises(StoreUnavailableError, match="not open"):
        await s.get_meta("k")
    await s.open()
    await s.close()
    with pytest.raises(StoreUnavailableError):
        await s.list_devices()
