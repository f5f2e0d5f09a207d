"""Store write benchmark: append_readings throughput and batch commit latency.

Usage: .venv/bin/python bench/store.py [--postgres URL] [--quick]

For batch sizes 1, 50 and 500 it awaits `append_readings` back to back (the way the
ingest writer does) and prints rows/s and the p50/p99 time of one batch commit, on
a SQLite file (synchronous=FULL, the default, and NORMAL for comparison) and, when
reachable, on PostgreSQL (a scratch database created and dropped by the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.storage.sql import SqlStore

DEVICES = 100
BATCH_SIZES = (1, 50, 500)
ROWS_PER_SIZE = {1: 1_000, 50: 20_000, 500: 100_000}
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run_one(store: SqlStore, size: int, rows: int, seq0: int) -> tuple[float, float, float]:
    """Returns rows/s, p50 ms, p99 ms of one batch commit."""
    latencies: list[float] = []
    seq = seq0
    started = time.perf_counter()
    for _ in range(max(1, rows // size)):
        batch = []
        for _ in range(size):
            seq += 1
            now = 1_764_000_000_000 + seq
            values = {"temperature": 21.5, "soil_moisture": 0.42, "light": 830.0}
            batch.append(Reading(f"dev-{seq % DEVICES:04d}", seq, now, now + 3, values))
        t0 = time.perf_counter()
        await store.append_readings(batch)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    written = len(latencies) * size
    return written / elapsed, percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3


async def bench(label: str, store: SqlStore, scale: float) -> None:
    async with store:
        for i in range(DEVICES):
            await store.add_device(DeviceRecord(id=f"dev-{i:04d}", created_at_ms=1, token_hash="h"))
        seq = 0
        for size in BATCH_SIZES:
            rows = max(size * 20, int(ROWS_PER_SIZE[size] * scale))
            rate, p50, p99 = await run_one(store, size, rows, seq)
            seq += rows
            print(
                f"{label:<22} batch {size:>4}: {rate:>9,.0f} rows/s   "
                f"commit p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   ({rows:,} rows)"
            )


def pg_scratch(admin: str) -> tuple[str, str] | None:
    try:
        import psycopg

        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            name = f"planty_bench_{uuid.uuid4().hex[:8]}"
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        print(f"PostgreSQL skipped: not reachable at {admin.rsplit('@', 1)[-1]} ({exc})")
        return None
    return name, admin.rsplit("/", 1)[0] + f"/{name}"


def pg_drop(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=PG_ADMIN, help="admin URL of a PostgreSQL server")
    parser.add_argument("--quick", action="store_true", help="a tenth of the rows")
    parser.add_argument(
        "--dir", default=None, help="folder for the SQLite file (default: a temp folder)"
    )
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    print(
        f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="planty-bench-") as tmp:
        print(f"SQLite file in {tmp}")
        for sync in ("FULL", "NORMAL"):
            url = f"sqlite:///{Path(tmp) / f'bench-{sync}.sqlite3'}"
            await bench(f"sqlite sync={sync}", SqlStore(url, sqlite_synchronous=sync), scale)
    scratch = pg_scratch(args.postgres)
    if scratch is not None:
        name, url = scratch
        try:
            await bench("postgresql", SqlStore(url), scale)
        finally:
            pg_drop(args.postgres, name)


if __name__ == "__main__":
    asyncio.run(main())
