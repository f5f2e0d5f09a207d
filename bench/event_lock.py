"""The event log's advisory lock with several writers (issue 15): what does it cost?

Every transaction that appends events on PostgreSQL first takes one transaction-level
advisory lock (storage/sql_events.py), so ids become visible in order and a cursor
never skips one. With several gateway instances writing, that lock serialises their
commits. This runs K writer processes (1, 2, 4), each appending batches of readings
(every reading also appends its event, as the gateway does) to one private PostgreSQL,
once with the lock and once without it, and prints readings/s for each.

    .venv/bin/python bench/event_lock.py [--batches 40] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from pathlib import Path

from measure import machine_line, private_postgres

REPO = Path(__file__).resolve().parents[1]



def _writer(url: str, index: int, batches: int, size: int, lock: bool, start: float) -> None:
    from planty_broker.domain.models import DeviceRecord, Reading
    from planty_broker.storage import sql_events
    from planty_broker.storage.sql import SqlStore

    if not lock:  # the same inserts without the advisory lock
        original = sql_events.insert_events

        def unlocked(conn, params):  # type: ignore[no-untyped-def]
            if params:
                conn.exec_driver_sql(sql_events._sql_for(conn.dialect), list(params))

        sql_events.insert_events = unlocked
        assert original is not unlocked

    async def run() -> None:
        store = SqlStore(url)
        await store.open()
        device = f"w{index}-{int(lock)}-{int(start)}"
        await store.add_device(DeviceRecord(id=device, created_at_ms=0, token_hash=""))
        while time.time() < start:
            await asyncio.sleep(0.005)
        seq = 0
        for _ in range(batches):
            now = int(time.time() * 1000)
            rows = [Reading(device, seq + i, now, now, {"t": 20.0}) for i in range(size)]
            seq += size
            await store.append_readings(rows)
        await store.close()

    asyncio.run(run())


def one(url: str, writers: int, batches: int, size: int, lock: bool) -> float:
    start = time.time() + 2.0  # every process connected before the clock starts
    procs = [
        multiprocessing.Process(target=_writer, args=(url, i, batches, size, lock, start))
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.time() - start
    return writers * batches * size / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    print(machine_line(), flush=True)
    with private_postgres("planty-evlock-") as url:
        from planty_broker.storage.sql import SqlStore

        async def migrate() -> None:
            s = SqlStore(url)
            await s.open()
            await s.close()

        asyncio.run(migrate())
        for writers in (1, 2, 4):
            with_lock = one(url, writers, args.batches, args.batch, True)
            without = one(url, writers, args.batches, args.batch, False)
            print(
                f"writers={writers}: with the lock {with_lock:,.0f} readings/s, without "
                f"{without:,.0f} readings/s ({with_lock / without:.2f}x)",
                flush=True,
            )

if __name__ == "__main__":
    main()
