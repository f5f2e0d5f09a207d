"""Backup archives of a data folder: what goes in, what a restore does with what is there."""

from __future__ import annotations

import io
import sqlite3
import tarfile
from pathlib import Path

import pytest

from planty_broker.storage.backup import BackupError, backup, lock_data_dir, restore


def folder(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "pki").mkdir(parents=True)
    (data / "pki" / "ca.key").write_text("KEY")
    (data / "admin-token").write_text("tok")
    (data / "mosquitto").mkdir()
    (data / "mosquitto" / "mosquitto.db").write_text("sessions")
    with sqlite3.connect(data / "planty.sqlite3") as c:
        c.execute("PRAGMA journal_mode = WAL")
        c.execute("CREATE TABLE t (x)")
        c.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    return data


def test_archive_holds_the_snapshot_and_the_secrets_not_mosquitto(tmp_path: Path) -> None:
    data = folder(tmp_path)
    r = backup(data, tmp_path / "b.tar.gz", sqlite_path=data / "planty.sqlite3", now_ms=1_000)
    with tarfile.open(r.path) as tar:
        names = sorted(tar.getnames())
    assert names == ["admin-token", "pki/ca.key", "planty-backup.json", "planty.sqlite3"]
    assert oct(r.path.stat().st_mode)[-3:] == "600"
    with pytest.raises(BackupError, match="outside the data folder"):
        backup(data, data / "b.tar.gz", sqlite_path=None, now_ms=1)


def test_postgresql_archives_hold_the_folder_only(tmp_path: Path) -> None:
    data = folder(tmp_path)
    r = backup(data, tmp_path / "b.tar.gz", sqlite_path=None, now_ms=1_000)
    assert r.store == "postgresql" and r.store_bytes == 0
    with tarfile.open(r.path) as tar:
        assert "planty.sqlite3" not in tar.getnames()


def test_restore_into_a_used_folder_moves_it_aside_with_force(tmp_path: Path) -> None:
    data = folder(tmp_path)
    archive = backup(data, tmp_path / "b.tar.gz", sqlite_path=data / "planty.sqlite3", now_ms=1)
    (data / "admin-token").write_text("newer")
    with pytest.raises(BackupError, match="--force"):
        restore(archive.path, data, force=False, now_ms=5_000)
    done = restore(archive.path, data, force=True, now_ms=5_000)
    aside = done["moved_to"]
    assert aside == tmp_path / "data.before-restore-5"
    assert (aside / "admin-token").read_text() == "newer"  # nothing deleted
    assert (data / "admin-token").read_text() == "tok"
    with sqlite3.connect(data / "planty.sqlite3") as c:
        assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 100


def test_the_lock_keeps_a_restore_off_a_running_gateway(tmp_path: Path) -> None:
    data = folder(tmp_path)
    archive = backup(data, tmp_path / "b.tar.gz", sqlite_path=data / "planty.sqlite3", now_ms=1)
    held = lock_data_dir(data)
    assert held is not None
    try:
        assert lock_data_dir(data) is None  # a second gateway would be refused too
        with pytest.raises(BackupError, match="a gateway is running"):
            restore(archive.path, data, force=True, now_ms=1)
    finally:
        held.close()


def test_not_a_backup_and_unsafe_entries_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    with pytest.raises(BackupError, match="not a Planty Broker backup"):
        restore(junk, tmp_path / "x", force=False, now_ms=1)
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name, body in (("planty-backup.json", b'{"format": 1}'), ("../escape", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    with pytest.raises(BackupError, match="refused entry"):
        restore(evil, tmp_path / "y", force=False, now_ms=1)
    assert not (tmp_path / "escape").exists()
