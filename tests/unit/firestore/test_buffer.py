"""DocBuffer: coalescing, at most one write per document per debounce, batches, outages."""

from __future__ import annotations

import itertools

import pytest

from planty_broker.northbound.firestore.buffer import DocBuffer
from planty_broker.northbound.firestore.memory_port import MemoryFirestore
from planty_broker.northbound.firestore.port import FirestoreUnavailableError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fs() -> MemoryFirestore:
    return MemoryFirestore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_many_updates_of_one_document_become_one_write(
    fs: MemoryFirestore, clock: Clock
) -> None:
    buf = DocBuffer(fs, 1.0, clock)
    for seq in range(10):
        buf.set("brokers/b/devices/d", {"seq": seq, "readings": {"t": 20 + seq}}, event_id=seq + 1)
    assert await buf.flush() == 1
    assert fs.writes_to("brokers/b/devices/d") == 1
    assert fs.docs["brokers/b/devices/d"] == {"seq": 9, "readings": {"t": 29}}


async def test_a_document_is_written_at_most_once_per_debounce(
    fs: MemoryFirestore, clock: Clock
) -> None:
    buf = DocBuffer(fs, 1.0, clock)
    path = "brokers/b/devices/d"
    writes_at: list[float] = []
    for step in range(50):  # an update every 0.1 s for 5 s
        buf.set(path, {"seq": step})
        before = fs.writes_to(path)
        await buf.flush()
        if fs.writes_to(path) > before:
            writes_at.append(clock.t)
        clock.t += 0.1
    gaps = [b - a for a, b in itertools.pairwise(writes_at)]
    assert len(writes_at) >= 4
    assert min(gaps) >= 1.0 - 1e-9
    await buf.flush(force=True)
    assert fs.docs[path] == {"seq": 49}  # the newest value always gets out


async def test_batches_hold_at_most_500_writes(fs: MemoryFirestore, clock: Clock) -> None:
    buf = DocBuffer(fs, 1.0, clock)
    for i in range(1200):
        buf.set(f"c/{i}", {"n": i})
    assert await buf.flush() == 1200
    assert all(len(batch) <= 500 for batch in fs.commits)
    assert len(fs.docs) == 1200


async def test_nothing_is_dropped_while_firestore_is_down(
    fs: MemoryFirestore, clock: Clock
) -> None:
    buf = DocBuffer(fs, 1.0, clock)
    buf.set("d/1", {"a": 1, "m": {"x": 1}}, event_id=5)
    fs.offline = True
    with pytest.raises(FirestoreUnavailableError):
        await buf.flush()
    buf.set("d/1", {"a": 2, "m": {"y": 2}}, event_id=6)  # newer data while it is down
    assert buf.confirmed_through(6) == 4  # event 5 is not in Firestore yet
    fs.offline = False
    await buf.flush()
    assert fs.docs["d/1"] == {"a": 2, "m": {"x": 1, "y": 2}}
    assert buf.confirmed_through(6) == 6


async def test_a_refused_document_is_dropped_and_the_others_written(
    fs: MemoryFirestore, clock: Clock
) -> None:
    buf = DocBuffer(fs, 1.0, clock)
    fs.reject_paths.add("d/bad")
    for name in ("d/1", "d/bad", "d/2"):
        buf.set(name, {"v": 1}, event_id=1)
    assert await buf.flush() == 2
    assert set(fs.docs) == {"d/1", "d/2"}
    assert buf.rejected == 1 and len(buf) == 0


async def test_delete_then_set_replaces_the_document(fs: MemoryFirestore, clock: Clock) -> None:
    fs.docs["d/1"] = {"old": True, "keep": 1}
    buf = DocBuffer(fs, 1.0, clock)
    buf.delete("d/1")
    buf.set("d/1", {"new": True})
    await buf.flush()
    assert fs.docs["d/1"] == {"new": True}
