"""DeviceRegistry.add_many: each row on its own, one credential hook for the batch, and a
device another gateway instance registered meanwhile refused without losing the others."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from planty_broker.domain.models import DeviceRecord
from planty_broker.services.bus import Bus, DevicesChanged
from planty_broker.services.registry import MAX_IMPORT, DeviceRegistry, NewDevice
from planty_broker.storage.memory import MemoryStore


async def make() -> tuple[DeviceRegistry, MemoryStore, list[bool], list[str]]:
    store = MemoryStore()
    await store.open()
    bus = Bus()
    added: list[str] = []
    bus.subscribe(DevicesChanged, lambda e: added.append(e.device_id))
    reg = DeviceRegistry(store, bus, lambda token: f"h:{token}")
    await reg.load()
    hooks: list[bool] = []

    async def hook(*, wait: bool = True) -> None:
        hooks.append(wait)

    reg.credentials_hook = hook
    return reg, store, hooks, added


async def test_rows_are_judged_one_by_one_and_the_batch_costs_one_reload() -> None:
    reg, _store, hooks, added = await make()
    await reg.add("taken-1")
    hooks.clear()
    rows = [
        NewDevice("pot-b", "Basil"),
        NewDevice("Bad Id"),
        NewDevice("pot-a", sensors=("temperature",)),
        NewDevice("pot-b"),
        NewDevice("taken-1"),
        NewDevice("planty-gateway"),
    ]
    out = await reg.add_many(rows)
    assert [(o.row, o.id, o.error) for o in out] == [
        (0, "pot-b", None),
        (1, "Bad Id", "invalid_device_id"),
        (2, "pot-a", None),
        (3, "pot-b", "duplicate_in_batch"),
        (4, "taken-1", "device_exists"),
        (5, "planty-gateway", "invalid_device_id"),
    ]
    assert out[0].token and out[2].token and out[0].token != out[2].token
    assert hooks == [True]  # one reload for the batch, waited for
    assert reg.ids() == ["pot-a", "pot-b", "taken-1"]
    pot_b = reg.require("pot-b")
    assert pot_b.name == "Basil" and pot_b.token_hash == f"h:{out[0].token}"
    assert reg.require("pot-a").sensors == ("temperature",)
    assert added[-2:] == ["pot-b", "pot-a"]


async def test_a_device_registered_elsewhere_meanwhile_loses_nothing_else() -> None:
    reg, store, hooks, _added = await make()
    # Another gateway instance sharing the store registers pot-2 after our check.
    await store.add_device(DeviceRecord(id="pot-2", created_at_ms=1, token_hash="h:x"))
    out = await reg.add_many([NewDevice(f"pot-{n}") for n in range(4)])
    assert [o.error for o in out] == [None, None, "device_exists", None]
    assert {d.id for d in await store.list_devices()} == {"pot-0", "pot-1", "pot-2", "pot-3"}
    assert "pot-2" not in reg  # not ours: the registry's refresh brings it in
    assert hooks == [True]


async def test_nothing_valid_means_no_reload_and_too_many_rows_are_refused() -> None:
    reg, _store, hooks, _added = await make()
    out = await reg.add_many([NewDevice("X")])
    assert out[0].error == "invalid_device_id" and hooks == []
    rows: Sequence[NewDevice] = [NewDevice(f"d-{n}") for n in range(MAX_IMPORT + 1)]
    with pytest.raises(ValueError, match="at most"):
        await reg.add_many(rows)
