"""SQLite specifics: durability settings, kill -9, failures a user can meet, schema checks."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from planty_broker.domain.models import DeviceRecord, Reading
from planty_broker.errors import StoreError
from planty_broker.ports.store import StoreUnavailableError
from planty_broker.storage import migrate
from planty_broker.storage.schema import metadata
from planty_broker.storage.sql import SqlStore, open_store

pytestmark = pytest.mark.integration


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def dev(device_id: str = "d") -> DeviceRecord:
    return DeviceRecord(id=device_id, created_at_ms=1, token_hash="h")


def readings(n: int, start: int = 0, device_id: str = "d") -> list[Reading]:
    return [Reading(device_id, i, i, i, {"t": 20.0 + i / 10}) for i in range(start, start + n)]


async def test_connection_settings_are_durable(tmp_path: Path) -> None:
    async with SqlStore(url_of(tmp_path / "db.sqlite3")) as s:
        got = await s.run(
            lambda c: [
                c.exec_driver_sql(f"PRAGMA {p}").scalar()
                for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            ]
        )
    assert got == ["wal", 2, 1, 10_000]  # synchronous 2 = FULL


async def test_missing_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "planty.sqlite3"
    async with open_store(str(path)) as s:
        await s.add_device(dev())
    assert path.exists()


async def test_reopen_keeps_the_schema_at_head_and_the_data(tmp_path: Path) -> None:
    url = url_of(tmp_path / "db.sqlite3")
    async with SqlStore(url) as s:
        await s.add_device(dev())
    for _ in range(2):
        async with SqlStore(url) as s:
            assert await s.run(migrate.current_revision) == migrate.head_revision()
            versions = await s.run(
                lambda c: c.execute(text("SELECT count(*) FROM alembic_version")).scalar()
            )
            assert versions == 1
            assert [d.id for d in await s.list_devices()] == ["d"]


async def test_migrations_build_exactly_the_schema_module(tmp_path: Path) -> None:
    async with SqlStore(url_of(tmp_path / "db.sqlite3")) as s:
        diff = await s.run(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
    assert diff == []


async def test_acknowledged_batches_survive_kill_9(tmp_path: Path) -> None:
    """The process is killed while writing: every batch whose call had returned is there."""
    url = url_of(tmp_path / "db.sqlite3")
    child = textwrap.dedent(
        f"""
        import asyncio, sys
        from planty_broker.domain.models import DeviceRecord, Reading
        from planty_broker.storage.sql import SqlStore

        async def main():
            store = SqlStore({url!r})
            await store.open()
            await store.add_device(DeviceRecord(id="d", created_at_ms=1, token_hash="h"))
            seq = 0
            while True:
                batch = [Reading("d", seq + i, seq + i, seq + i, {{"t": 1.0}}) for i in range(50)]
                await store.append_readings(batch)
                seq += 50
                print(seq, flush=True)

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert proc.stdout is not None
    acknowledged = 0
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 500:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert acknowledged >= 500, "the writer process died before writing"

    async with SqlStore(url) as s:
        stored = await s.query_readings("d", None, None, 10**9)
    seqs = [r.seq for r in stored]
    assert seqs[:acknowledged] == list(range(acknowledged))
    assert len(seqs) % 50 == 0  # whole batches only: one transaction each


async def test_full_disk_gives_a_clear_error_and_the_store_recovers(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    async with SqlStore(url_of(folder / "db.sqlite3")) as s:
        await s.add_device(dev())
        pages = await s.run(lambda c: c.exec_driver_sql("PRAGMA page_count").scalar())
        # Simulate a full disk: the database may not grow past its current size.
        await s.run(lambda c: c.exec_driver_sql(f"PRAGMA max_page_count = {pages}"))
        with pytest.raises(StoreUnavailableError) as err:
            await s.append_readings(readings(2_000))
        assert str(err.value) == (
            f"database disk is full: free space in {folder} (SQLite store {folder / 'db.sqlite3'})"
        )
        assert await s.query_readings("d", None, None, 10) == []  # nothing half-written

        await s.run(lambda c: c.exec_driver_sql("PRAGMA max_page_count = 1073741823"))
        await s.append_readings(readings(2_000))
        assert len(await s.query_readings("d", None, None, 10**6)) == 2_000


async def test_read_only_database_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    async with SqlStore(url_of(path)) as s:
        await s.add_device(dev())
    async with SqlStore(f"sqlite:///file:{path}?mode=ro&uri=true") as ro:
        assert [d.id for d in await ro.list_devices()] == ["d"]
        with pytest.raises(StoreUnavailableError) as err:
            await ro.append_readings(readings(1))
    assert str(err.value) == (
        f"cannot write the SQLite store {path}: it is read-only; "
        f"make {path} and {tmp_path} writable by this user"
    )


async def test_folder_that_cannot_be_created_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    s = SqlStore(url_of(blocker / "db.sqlite3"))
    with pytest.raises(StoreUnavailableError, match=f"cannot create the folder {blocker}"):
        await s.open()
    with pytest.raises(StoreUnavailableError, match="not open"):
        await s.list_devices()


async def test_a_file_that_is_not_a_database_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"this is not sqlite " * 500)
    with pytest.raises(StoreUnavailableError, match="is not a valid SQLite database"):
        await SqlStore(url_of(path)).open()


async def test_a_schema_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    async with SqlStore(url_of(path)) as s:
        await s.add_device(dev())
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_future'")
    with pytest.raises(StoreError, match="upgrade planty-broker"):
        await SqlStore(url_of(path)).open()
