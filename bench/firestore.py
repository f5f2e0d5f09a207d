"""Firestore connector: how fast the event-log sink folds a backlog, and how much the
debounced buffer saves, against the in-memory port (no network; the emulator's own speed
is not the connector's). Prints numbers; run: .venv/bin/python bench/firestore.py"""

from __future__ import annotations

import asyncio
import time

from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.northbound.firestore.buffer import DocBuffer
from planty_broker.northbound.firestore.memory_port import MemoryFirestore
from planty_broker.northbound.firestore.model import Paths
from planty_broker.northbound.firestore.sink import EventSink, StoreEvents
from planty_broker.storage.memory import MemoryStore

DEVICES = 200
PER_DEVICE = 300  # readings each: a 5-minute outage at 1 reading/s


async def main() -> None:
    async with MemoryStore() as store:
        t0 = 1_764_240_000_000
        for d in range(DEVICES):
            await store.add_device(DeviceRecord(f"dev-{d:04d}", t0, "h"))
        fs = MemoryFirestore()
        buf = DocBuffer(fs, 1.0)
        sink = EventSink(StoreEvents(store), fs, Paths("bench"), buf, known_device=lambda _d: True)
        await sink.open()
        batch = [
            Reading(f"dev-{d:04d}", s, t0 + s * 1000, t0 + s * 1000,
                    {"temperature": 20.0 + s % 7, "soil_moisture": 0.4, "light": 800.0})
            for s in range(PER_DEVICE) for d in range(DEVICES)
        ]  # fmt: skip
        await store.append_readings(batch)
        events = len(batch)
        start = time.perf_counter()
        while await sink.pull():
            pass
        folded = time.perf_counter() - start
        await buf.flush(force=True)
        await sink.confirm()
        total = time.perf_counter() - start
        writes = sum(len(c) for c in fs.commits)
        print(f"backlog: {events} readings from {DEVICES} devices")
        print(f"fold:    {events / folded:,.0f} events/s ({folded:.2f} s)")
        print(f"total:   {events / total:,.0f} events/s incl. building {writes} writes")
        print(f"writes:  {writes} document writes in {len(fs.commits)} batches "
              f"({events / writes:.0f} readings per write)")  # fmt: skip
        print(f"cursor:  {sink.confirmed} of {events}")


if __name__ == "__main__":
    asyncio.run(main())
