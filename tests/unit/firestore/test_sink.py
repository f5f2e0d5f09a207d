"""The event-log sink over a memory store and a memory Firestore: store-and-forward."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.northbound.firestore.buffer import DocBuffer
from planty_broker.northbound.firestore.memory_port import MemoryFirestore
from planty_broker.northbound.firestore.model import Paths
from planty_broker.northbound.firestore.port import FirestoreUnavailableError
from planty_broker.northbound.firestore.sink import EventSink, StoreEvents
from planty_broker.storage.memory import MemoryStore

T0 = int(dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC).timestamp() * 1000)
HIST = "brokers/b/devices/d1/history/2026-11-27T12"


@pytest_asyncio.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as s:
        await s.add_device(DeviceRecord("d1", T0, "hash"))
        yield s


def make_sink(store: MemoryStore, fs: MemoryFirestore) -> tuple[EventSink, DocBuffer]:
    buf = DocBuffer(fs, 1.0)
    sink = EventSink(
        StoreEvents(store),
        fs,
        Paths("b"),
        buf,
        known_device=lambda d: d == "d1",
        clock_ms=lambda: T0 + 60_000,  # the readings' own hour: their buckets are current
    )
    return sink, buf


async def readings(store: MemoryStore, seqs: range) -> None:
    await store.append_readings(
        [Reading("d1", s, T0 + s * 1000, T0 + s * 1000, {"t": float(s)}) for s in seqs]
    )


async def forward(sink: EventSink, buf: DocBuffer) -> None:
    while await sink.pull():
        pass
    await buf.flush(force=True)
    await sink.confirm()


async def test_first_start_registers_at_the_end_of_the_log(store: MemoryStore) -> None:
    await readings(store, range(3))  # before Firestore was switched on: not replayed
    sink, buf = make_sink(store, MemoryFirestore())
    await sink.open()
    assert (await store.get_consumer("firestore")) is not None
    assert sink.confirmed == 3
    await readings(store, range(3, 5))
    await forward(sink, buf)
    assert sink.confirmed == 5 and sink.readings_folded == 2


async def test_outage_keeps_the_cursor_then_catches_up_exactly(store: MemoryStore) -> None:
    fs = MemoryFirestore()
    sink, buf = make_sink(store, fs)
    await sink.open()
    await readings(store, range(10))
    await forward(sink, buf)
    assert (await store.get_consumer("firestore")).cursor == 10

    fs.offline = True
    await readings(store, range(10, 40))
    await sink.pull()
    with pytest.raises(FirestoreUnavailableError):
        await buf.flush(force=True)
    await sink.confirm()
    assert (await store.get_consumer("firestore")).cursor == 10  # nothing confirmed meanwhile

    fs.offline = False
    await forward(sink, buf)
    assert (await store.get_consumer("firestore")).cursor == 40
    assert fs.docs["brokers/b/devices/d1"]["seq"] == 39
    hist = fs.docs[HIST]
    assert hist["messages"] == 40
    assert hist["readings"]["t"]["sum"] == sum(range(40))


async def test_a_crash_before_confirming_never_counts_twice(store: MemoryStore) -> None:
    fs = MemoryFirestore()
    sink, buf = make_sink(store, fs)
    await sink.open()
    await readings(store, range(20))
    while await sink.pull():
        pass
    await buf.flush(force=True)  # Firestore has everything ...
    # ... but the process dies before the cursor moves.
    assert (await store.get_consumer("firestore")).cursor == 0
    again, buf2 = make_sink(store, fs)
    await again.open()
    await forward(again, buf2)  # replays events 1..20
    assert again.replays_skipped == 20
    assert fs.docs[HIST]["messages"] == 20
    assert fs.docs[HIST]["readings"]["t"]["count"] == 20


async def test_presence_errors_and_firestore_commands_reach_their_documents(
    store: MemoryStore,
) -> None:
    from planty_broker.domain.events import NewEvent

    fs = MemoryFirestore()
    sink, buf = make_sink(store, fs)
    await sink.open()
    await store.append_events(
        [
            NewEvent(T0, "presence", "d1", {"state": "online", "cause": "status_online"}),
            NewEvent(T0 + 1, "device_error", "d1", {"kind": "bad_json", "message": "oops"}),
            NewEvent(T0 + 2, "command", "d1", {"id": "c1", "state": "queued", "attempt": 0,
                                               "origin": "firestore", "action": "ping"}),
            NewEvent(T0 + 3, "command", "d1", {"id": "c2", "state": "queued", "attempt": 0,
                                               "origin": "api", "action": "ping"}),
            NewEvent(T0 + 4, "command", "d1", {"id": "c1", "state": "acked", "attempt": 1,
                                               "origin": "firestore", "result": {"ok": 1},
                                               "rtt_ms": 12.0}),
            NewEvent(T0 + 5, "presence", "ghost", {"state": "online", "cause": "message"}),
        ]
    )  # fmt: skip
    await forward(sink, buf)
    device = fs.docs["brokers/b/devices/d1"]
    assert device["online"] is True and device["presence_cause"] == "status_online"
    assert device["last_error"]["kind"] == "bad_json"
    cmd = fs.docs["brokers/b/commands/c1"]
    assert cmd["state"] == "acked" and cmd["result"] == {"ok": 1} and cmd["rtt_ms"] == 12.0
    assert "brokers/b/commands/c2" not in fs.docs  # API commands are not mirrored
    assert "brokers/b/devices/ghost" not in fs.docs  # unknown (removed) devices are skipped
