"""Bytes on disk per device-day (issue 12): raw readings with their events, hourly rollups,
presence transitions, and the store size the default retention settles at.

    python bench/storage_growth.py [--devices 50] [--days 2] [--interval 60]

Writes simulated days of telemetry (3 sensors, like the simulator's devices) through the
real `SqlStore` on a SQLite file in batches like ingest does, rolls them up, then lets
retention delete the raw readings, and reads each table's size from SQLite's `dbstat`.
Sizes do not depend on the machine; the time taken is printed with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from measure import machine_line

from planty_broker.domain.history import DAY_MS
from planty_broker.domain.models import (
    DeviceRecord,
    PresenceCause,
    PresenceState,
    PresenceTransition,
    Reading,
)
from planty_broker.storage.sql import SqlStore

T0 = 1_900_000_000_000 - 1_900_000_000_000 % DAY_MS
GROUPS = {
    "readings": ("readings", "ix_readings_device_ts", "ux_readings_device_boot_seq"),
    "reading events": ("events", "ix_events_at", "ix_events_type_id"),
    "rollups": ("reading_rollups",),
    "presence": ("presence", "ix_presence_device_at"),
}


def table_bytes(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = c.execute("SELECT name, sum(pgsize - unused) FROM dbstat GROUP BY name").fetchall()
    sizes = dict(rows)
    return {g: sum(sizes.get(n, 0) for n in names) for g, names in GROUPS.items()}


def file_bytes(db: Path) -> int:
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = c.execute("PRAGMA page_size").fetchone()[0]
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page


async def run(devices: int, days: int, interval_s: float) -> None:
    rng = random.Random(12)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "planty.sqlite3"
        store = SqlStore(f"sqlite:///{db}", sqlite_synchronous="NORMAL")
        await store.open()
        ids = [f"greenhouse-{i:04d}" for i in range(devices)]
        for d in ids:
            await store.add_device(DeviceRecord(d, T0, "$7$hash"))
        state = {d: [21.0, 0.45, 800.0] for d in ids}
        started = time.monotonic()
        step = int(interval_s * 1000)
        n = 0
        batch: list[Reading] = []
        for t in range(T0, T0 + days * DAY_MS, step):
            for i, d in enumerate(ids):
                s = state[d]
                s[0] += rng.gauss(0, 0.05)
                s[1] = min(1.0, max(0.0, s[1] + rng.gauss(0, 0.002)))
                s[2] = max(0.0, s[2] + rng.gauss(0, 5))
                values = {
                    "temperature": round(s[0], 2),
                    "soil_moisture": round(s[1], 3),
                    "light": round(s[2], 1),
                }
                ts = t + i * 7
                batch.append(Reading(d, n // devices, ts, ts + 40, values, boot=1))
                n += 1
                if len(batch) >= 500:
                    await store.append_readings(batch)
                    batch = []
        if batch:
            await store.append_readings(batch)
        transitions = [
            PresenceTransition(d, state_, T0 + k * DAY_MS // 4 + i, PresenceCause.SILENCE)
            for i, d in enumerate(ids)
            for k, state_ in enumerate(
                [PresenceState.ONLINE, PresenceState.LATE, PresenceState.ONLINE] * days
            )
        ]
        await store.append_presence(transitions)
        written_s = time.monotonic() - started
        t = time.monotonic()
        while await store.roll_up_readings(T0 + (days + 1) * DAY_MS, 5_000):
            pass
        rollup_s = time.monotonic() - t
        rolled = table_bytes(db)
        before = file_bytes(db)
        t = time.monotonic()
        deleted = await store.prune_readings(T0 + (days + 1) * DAY_MS, 10**9)
        prune_s = time.monotonic() - t
        after = file_bytes(db)
        await store.close()

    device_days = devices * days
    per = {k: v / device_days for k, v in rolled.items()}
    readings_per_day = DAY_MS / step
    print(machine_line())
    print(
        f"{devices} devices x {days} days, a reading every {interval_s:g} s "
        f"({readings_per_day:.0f} a device-day, 3 sensors): {n} readings"
    )
    print("bytes per device-day (SQLite, dbstat: tables with their indexes):")
    for k in GROUPS:
        print(f"  {k:15s} {per[k]:10,.0f}")
    raw_day = per["readings"] + per["reading events"]
    print(f"  raw total       {raw_day:10,.0f}  ({raw_day / readings_per_day:.0f} B a reading)")
    print(f"  rollup hours    {per['rollups'] / 24:10,.0f}  (B per device-hour, 3 sensors)")
    print(
        f"deleting the {deleted} raw readings freed {(before - after) / device_days:,.0f} "
        "B per device-day (reused by SQLite for new rows; the file does not shrink)"
    )
    keep_raw, keep_roll = 90, 5 * 366
    steady = per["readings"] * keep_raw + per["rollups"] * keep_roll
    print(
        f"steady state per device with the defaults (raw {keep_raw} d, rollups {keep_roll} d; "
        f"events pruned by their own retention): {steady / 1e6:,.1f} MB "
        f"(raw {per['readings'] * keep_raw / 1e6:,.1f} MB + rollups "
        f"{per['rollups'] * keep_roll / 1e6:,.1f} MB)"
    )
    print(
        f"time: write {written_s:.1f} s ({n / written_s:,.0f} readings/s), roll up "
        f"{rollup_s:.2f} s ({n / max(rollup_s, 1e-9):,.0f} readings/s), prune {prune_s:.2f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--interval", type=float, default=60.0)
    a = ap.parse_args()
    asyncio.run(run(a.devices, a.days, a.interval))


if __name__ == "__main__":
    main()
