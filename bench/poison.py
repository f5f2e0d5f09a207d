"""Poison isolation costs (issue 11): the edge codec's limits on the hot path, and how long the
batch writer takes to bisect one refused reading out of a batch, on a real SQLite store.

    .venv/bin/python bench/poison.py [--decodes 200000] [--batch 500] [--rounds 5]
        [--baseline OLD_PROTOCOL.py]   # e.g. git show 2cf4bdb:src/planty_broker/protocol.py

Prints: telemetry decodes/s (a typical payload), and per batch size the time to commit a clean
batch vs a batch holding one reading the store refuses (bisected, dead-lettered, the rest stored).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.protocol import decode_telemetry
from planty_broker.services.writer import BatchWriter
from planty_broker.storage.sql import SqlStore

TYPICAL = (
    b'{"seq": 123456, "ts": 1764240000123, "readings": '
    b'{"temperature": 21.5, "soil_moisture": 0.43, "light": 812, "humidity": 0.61, "battery": 3.9}}'
)


def bench_codec(n: int, decode: Callable[[bytes], object] = decode_telemetry) -> float:
    start = time.perf_counter()
    for _ in range(n):
        decode(TYPICAL)
    return n / (time.perf_counter() - start)


def load_baseline(path: str) -> Callable[[bytes], object]:
    """`decode_telemetry` of another protocol.py (a codec before the limits), to compare."""
    spec = importlib.util.spec_from_file_location("baseline_protocol", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec resolves the annotations through it
    spec.loader.exec_module(module)
    decode: Callable[[bytes], object] = module.decode_telemetry
    return decode


async def one_batch(store: SqlStore, size: int, poison: bool, base: int) -> tuple[float, int]:
    dead: list[Reading] = []

    async def set_aside(r: Reading, _src: bytes | None, _exc: Exception) -> None:
        dead.append(r)

    w: BatchWriter[Reading] = BatchWriter(
        store.append_readings, max_batch=size, max_wait_ms=10_000, dead_letter=set_aside
    )
    await w.start()
    now = 1_764_240_000_000
    items = [Reading("bench-1", base + i, now + i, now + i, {"t": 1.0}) for i in range(size)]
    if poison:
        items[size // 3] = Reading("bench-1", 2**63, now, now, {"t": 1.0})  # no database holds it
    start = time.perf_counter()
    await asyncio.gather(*(w.write(r) for r in items))
    took = time.perf_counter() - start
    await w.stop()
    assert len(dead) == (1 if poison else 0)
    return took, w.batches


async def bench_writer(size: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlStore(f"sqlite:///{Path(tmp) / 'bench.sqlite3'}")
        await store.open()
        await store.add_device(DeviceRecord("bench-1", 0, "h"))
        base = 0
        for poison in (False, True):
            times, commits = [], 0
            for _ in range(rounds):
                took, commits = await one_batch(store, size, poison, base)
                base += size
                times.append(took)
            label = "one refused reading" if poison else "clean"
            print(
                f"batch of {size}, {label}: median {statistics.median(times) * 1000:.1f} ms "
                f"({commits} commits)"
            )
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decodes", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", help="another protocol.py to compare decode_telemetry with")
    a = ap.parse_args()
    if a.baseline:
        old = load_baseline(a.baseline)
        for _ in range(3):  # interleaved: the machine's load moves both alike
            print(
                f"decode_telemetry: {bench_codec(a.decodes):,.0f} decodes/s, "
                f"baseline {bench_codec(a.decodes, old):,.0f} decodes/s"
            )
    else:
        print(f"decode_telemetry, typical payload: {bench_codec(a.decodes):,.0f} decodes/s")
    asyncio.run(bench_writer(a.batch, a.rounds))


if __name__ == "__main__":
    main()
