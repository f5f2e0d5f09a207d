"""`FirmwareStore` on memory, SQLite and PostgreSQL: the same answers, events in the same tx."""

from __future__ import annotations

from typing import Any

import pytest

from planty_broker.domain.events import NewEvent
from planty_broker.domain.firmware import (
    FIRMWARE_EVENT_TYPE,
    Rollout,
    RolloutState,
    Target,
    TargetState,
    make_release,
)
from planty_broker.ports.store import ReleaseExistsError

FILES = {"main.py": b"print('hi')\n", "lib.mpy": bytes(range(256)) * 4}


def _event(action: str, device: str | None = None, **data: Any) -> NewEvent:
    return NewEvent(1_000, FIRMWARE_EVENT_TYPE, device, {"action": action, **data})


async def test_a_release_is_stored_whole_and_never_replaced(store: Any) -> None:
    rel = make_release("1.3.0", FILES, 1_000, 1 << 20, "notes")
    await store.add_release(rel, FILES, [_event("release_added", version="1.3.0")])
    assert await store.get_release("1.3.0") == rel
    assert await store.release_contents("1.3.0") == FILES
    other = make_release("1.3.0", {"main.py": b"other"}, 2_000, 1 << 20)
    with pytest.raises(ReleaseExistsError, match="immutable"):
        await store.add_release(other, {"main.py": b"other"}, [])
    assert await store.release_contents("1.3.0") == FILES  # untouched
    await store.add_release(
        make_release("1.4.0", FILES, 3_000, 1 << 20), FILES, [_event("release_added")]
    )
    assert [r.version for r in await store.list_releases()] == ["1.4.0", "1.3.0"]
    assert await store.get_release("9.9.9") is None and await store.release_contents("9") == {}
    events = await store.read_events(0, 100, [FIRMWARE_EVENT_TYPE])
    assert [e.data["action"] for e in events] == ["release_added", "release_added"]


async def test_rollouts_and_targets_round_trip_with_their_events(store: Any) -> None:
    await store.add_release(make_release("2.0.0", FILES, 1, 1 << 20), FILES, [])
    r = Rollout(0, "2.0.0", RolloutState.RUNNING, (1, 2), 0.2, 10, 10, options={"devices": 3})
    targets = [Target(0, d, w, updated_ms=10) for d, w in (("b", 1), ("a", 0), ("c", 1))]
    created = await store.create_rollout(r, targets, [_event("rollout_started")])
    assert created.id > 0 and created.wave_sizes == (1, 2)
    again = await store.create_rollout(r, [Target(0, "a", 0)], [])
    assert again.id > created.id
    got = await store.rollout_targets(created.id)
    assert [(t.device_id, t.wave, t.state) for t in got] == [
        ("a", 0, TargetState.PENDING),
        ("b", 1, TargetState.PENDING),
        ("c", 1, TargetState.PENDING),
    ]
    sent = got[0].to(TargetState.ROLLED_BACK, 20, "not online after 3 boots")
    halted = created.to(RolloutState.HALTED, 21, "wave 1: 1 of 1 failed")
    ev = NewEvent(20, FIRMWARE_EVENT_TYPE, "a", {"rollout": created.id, "state": "rolled_back"})
    await store.save_rollout(halted, [sent], [ev])
    assert (await store.get_rollout(created.id)) == halted
    assert (await store.rollout_targets(created.id))[0] == sent
    assert [t.rollout_id for t in await store.device_targets("a")] == [again.id, created.id]
    assert [x.id for x in await store.list_rollouts()] == [again.id, created.id]
    events = await store.read_events(0, 100, [FIRMWARE_EVENT_TYPE])
    assert events[0].data == {"action": "rollout_started", "rollout": created.id}
    assert events[-1].device_id == "a" and events[-1].data["state"] == "rolled_back"
