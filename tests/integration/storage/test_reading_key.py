"""A reading is stored once (issue 12): (device, boot, seq) is unique, on MemoryStore, SQLite
and PostgreSQL alike; migration 0008 removes copies stored before it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.ports.store import Store
from planty_broker.storage import migrate
from planty_broker.storage.sql import SqlStore
from tests.integration.storage.conftest import PgServer


def reading(seq: int, boot: int | None = 3, device_id: str = "d", ts: int = 1_000) -> Reading:
    return Reading(device_id, seq, ts + seq, ts + seq + 5, {"t": 20.0 + seq}, boot)


async def reading_events(store: Any) -> list[tuple[str | None, int]]:
    return [(e.device_id, e.data["seq"]) for e in await store.read_events(0, 1000, ["reading"])]


async def test_a_reading_delivered_again_is_stored_once(store: Store) -> None:
    await store.add_device(DeviceRecord(id="d", created_at_ms=1, token_hash="h"))
    first = [reading(0), reading(1), reading(2)]
    assert await store.append_readings(first) == first
    # Redelivered (whole, partly, twice within one batch), mixed with new ones.
    again = [reading(1), reading(3), reading(3), reading(0), reading(4)]
    assert await store.append_readings(again) == [reading(3), reading(4)]
    assert await store.append_readings(first) == []
    stored = await store.query_readings("d", None, None, 100)
    assert [(r.boot, r.seq) for r in stored] == [(3, i) for i in range(5)]
    # Only what was stored got its event.
    assert await reading_events(store) == [("d", i) for i in range(5)]


async def test_boot_tells_readings_with_the_same_seq_apart(store: Store) -> None:
    await store.add_device(DeviceRecord(id="d", created_at_ms=1, token_hash="h"))
    await store.add_device(DeviceRecord(id="e", created_at_ms=1, token_hash="h"))
    batch = [reading(0, boot=1), reading(0, boot=2), reading(0, boot=1, device_id="e")]
    assert await store.append_readings(batch) == batch
    assert len(await store.query_readings("d", None, None, 100)) == 2


async def test_readings_without_a_boot_are_never_duplicates(store: Store) -> None:
    """No boot (old firmware, a `read` command's answer): every delivery is kept."""
    await store.add_device(DeviceRecord(id="d", created_at_ms=1, token_hash="h"))
    same = [reading(7, boot=None), reading(7, boot=None)]
    assert await store.append_readings(same) == same
    assert await store.append_readings(same) == same
    assert len(await store.query_readings("d", None, None, 100)) == 4


async def test_duplicates_and_removed_devices_in_one_batch(store: Store) -> None:
    await store.add_device(DeviceRecord(id="d", created_at_ms=1, token_hash="h"))
    await store.append_readings([reading(0)])
    batch = [reading(0), reading(0, device_id="gone"), reading(1)]
    assert await store.append_readings(batch) == [reading(1)]
    assert await reading_events(store) == [("d", 0), ("d", 1)]


# migration 0008 ---------------------------------------------------------------------


def _at_0007_with_copies(url: str) -> None:
    """A database migrated to 0007 holding a reading stored twice (and distinct ones)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys = ON")
            command.upgrade(migrate.alembic_config(conn), "0007_dead_letters")
            conn.execute(
                text(
                    "INSERT INTO devices (id, created_at_ms, token_hash, sensors, actuators, attrs)"
                    " VALUES ('d', 1, 'h', '[]', '[]', '{}')"
                )
            )
            rows = [(5, 100), (5, 100), (6, 200), (6, 201), (5, 100)]  # 5@100 three times
            for seq, ts in rows:
                conn.execute(
                    text(
                        'INSERT INTO readings (device_id, seq, ts_ms, received_ms, "values")'
                        " VALUES ('d', :seq, :ts, :ts, '{\"t\": 1.0}')"
                    ),
                    {"seq": seq, "ts": ts},
                )
    finally:
        engine.dispose()


async def _check_migrated(url: str) -> None:
    async with SqlStore(url) as store:
        got = await store.query_readings("d", None, None, 100)
        assert [(r.seq, r.ts_ms, r.boot) for r in got] == [
            (5, 100, None),
            (6, 200, None),
            (6, 201, None),
        ]
        names = await store.run(
            lambda c: {ix["name"]: ix["unique"] for ix in inspect(c).get_indexes("readings")}
        )
        assert names.get("ux_readings_device_boot_seq")
        new = [reading(5, boot=1), reading(5, boot=1)]
        assert await store.append_readings(new) == [new[0]]


@pytest.mark.integration
async def test_migration_removes_copies_then_adds_the_key_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'planty.sqlite3'}"
    _at_0007_with_copies(url)
    await _check_migrated(url)


@pytest.mark.integration
async def test_migration_removes_copies_then_adds_the_key_on_postgres(pg_server: PgServer) -> None:
    url = pg_server.create()
    _at_0007_with_copies(url)
    await _check_migrated(url)
