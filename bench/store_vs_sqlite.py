"""Our store against SQLite itself: rows/s of `SqlStore.append_readings` vs a plain
`sqlite3` executemany of the same rows, on the same file, in the same run (issue 17).

Usage: .venv/bin/python bench/store_vs_sqlite.py [--rows 200000] [--batch 500] [--synchronous FULL]

Prints rows/s (wall clock: includes each commit's fsync) and CPU time per row (the
process's CPU over each side's batches: ours includes the store thread) for both sides.

Both sides write batches of `--batch` readings (100 devices, 3 values each), one
transaction per batch, SQLite in WAL mode with the same `synchronous` level, into the
same database file (our schema, built by our migrations). Rounds alternate (a store
batch, then a plain batch) so that whatever else runs on the machine hits both alike.

- "store": `await store.append_readings(batch)` from `Reading` objects, which is what the
  ingest writer does: JSON of the values, the reading rows, each reading's event in the
  event log (same transaction), the commit, the hop to the store thread and back.
- "plain sqlite3": `executemany` of prepared tuples into `readings` alone on a second
  connection: SQLite's own batched-insert rate, the ceiling for one row per reading.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.storage.sql import SqlStore

DEVICES = 100
INSERT = (
    'INSERT INTO readings (device_id, seq, ts_ms, received_ms, "values") VALUES (?, ?, ?, ?, ?)'
)


def batches(n_rows: int, size: int, seq0: int) -> list[list[Reading]]:
    out: list[list[Reading]] = []
    seq = seq0
    for _ in range(n_rows // size):
        batch = []
        for _ in range(size):
            seq += 1
            now = 1_764_000_000_000 + seq
            values = {"temperature": 21.5, "soil_moisture": 0.42, "light": 830.0}
            batch.append(Reading(f"dev-{seq % DEVICES:04d}", seq, now, now + 3, values))
        out.append(batch)
    return out


def plain_params(batch: list[Reading]) -> list[tuple[object, ...]]:
    return [(r.device_id, r.seq, r.ts_ms, r.received_ms, json.dumps(r.values)) for r in batch]


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=200_000, help="readings per side")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL", "EXTRA"])
    args = p.parse_args()
    print(
        f"# {platform.node()} {platform.machine()} Python {platform.python_version()} "
        f"SQLite {sqlite3.sqlite_version}, {args.rows:,} readings per side, batch {args.batch}, "
        f"synchronous={args.synchronous}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        store = SqlStore(f"sqlite:///{path}", sqlite_synchronous=args.synchronous)
        async with store:
            for i in range(DEVICES):
                await store.add_device(DeviceRecord(f"dev-{i:04d}", 1, "h"))
            plain = sqlite3.connect(path, isolation_level=None)
            plain.execute("PRAGMA journal_mode = WAL")
            plain.execute(f"PRAGMA synchronous = {args.synchronous}")
            plain.execute("PRAGMA foreign_keys = ON")
            ours = batches(args.rows, args.batch, 0)
            theirs = [plain_params(b) for b in batches(args.rows, args.batch, 10 * args.rows)]
            t_store = t_plain = cpu_store = cpu_plain = 0.0
            for mine, other in zip(ours, theirs, strict=True):
                t0, c0 = time.perf_counter(), time.process_time()
                await store.append_readings(mine)
                t1, c1 = time.perf_counter(), time.process_time()
                plain.execute("BEGIN IMMEDIATE")
                plain.executemany(INSERT, other)
                plain.execute("COMMIT")
                t2, c2 = time.perf_counter(), time.process_time()
                t_store += t1 - t0
                t_plain += t2 - t1
                cpu_store += c1 - c0
                cpu_plain += c2 - c1
            plain.close()
            n = len(ours) * args.batch
            stored = await store.read_events(0, 1)
            assert stored, "the store wrote no events"
    rs, rp = n / t_store, n / t_plain
    us_s, us_p = cpu_store / n * 1e6, cpu_plain / n * 1e6
    print(f"store (append_readings, with events) {rs:>10,.0f} readings/s  {us_s:5.1f} us CPU each")
    print(f"plain sqlite3 executemany (readings) {rp:>10,.0f} rows/s      {us_p:5.1f} us CPU each")
    print(f"ratio store / plain                  {rs / rp:>10.2f}  (CPU {us_s / us_p:.2f}x)")


if __name__ == "__main__":
    asyncio.run(main())
