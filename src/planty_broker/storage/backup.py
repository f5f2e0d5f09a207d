"""Backups of a data folder: `planty backup FILE` while the gateway runs, `planty restore FILE`
into a stopped one (docs/operations.md).

An archive is a gzip'd tar holding a manifest (`planty-backup.json`), a consistent
snapshot of the SQLite store (`planty.sqlite3`, taken with SQLite's online backup API
in one step: the gateway keeps writing meanwhile, the copy is the database as of one
commit), and every other file of the data folder that cannot be rebuilt: the CA and
server keys (`pki/`), the admin token, the MQTT secrets, firmware images. Mosquitto's
folder is left out: its config, password and ACL files are written again from the
store at start, and its persistence (sessions in flight) belongs to the moment.

With a PostgreSQL store (`store.url`) the archive holds the folder's files only and
says so: back the database up with `pg_dump` (docs/operations.md).

A restore needs the gateway stopped: the gateway holds an exclusive lock on
`gateway.lock` in its data folder while it runs (`hold_data_dir_lock`), and the restore
takes the same lock.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from planty_broker import __version__
from planty_broker.errors import PlantyError

MANIFEST = "planty-backup.json"
STORE_FILE = "planty.sqlite3"
LOCK_FILE = "gateway.lock"
FORMAT = 1
# Never archived: the live store (its snapshot is), the lock, Mosquitto's generated folder.
_SKIP_NAMES = {STORE_FILE, f"{STORE_FILE}-wal", f"{STORE_FILE}-shm", f"{STORE_FILE}-journal"}
_SKIP_DIRS = {"mosquitto"}


class BackupError(PlantyError):
    """A backup or restore that cannot be done; the message says what to do."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    files: int
    store_bytes: int  # the SQLite snapshot (0: the store is PostgreSQL)
    archive_bytes: int
    seconds: float
    store: str  # "sqlite" or "postgresql"


def lock_data_dir(data_dir: Path) -> IO[str] | None:
    """Take the data folder's lock without waiting; None if someone (a gateway) holds it."""
    data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    f = (data_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _files(data_dir: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(data_dir):
        here = Path(root)
        if here == data_dir:
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        else:
            dirs.sort()
        for name in sorted(files):
            if here == data_dir and (name in _SKIP_NAMES or name == LOCK_FILE):
                continue
            yield here / name


def snapshot_sqlite(source: Path, target: Path) -> int:
    """A consistent copy of a live SQLite database (one backup step: the source's writers go
    on, the copy is one committed state); returns its size."""
    if not source.exists():
        raise BackupError(f"no store at {source}: is --data-dir the gateway's data folder?")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.execute("PRAGMA busy_timeout = 30000")
        src.backup(dst)  # pages=-1: everything in one step, under one read transaction
        dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        ok = dst.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            raise BackupError(f"the snapshot of {source} fails SQLite's check: {ok}")
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read the store {source}: {exc}") from exc
    finally:
        src.close()
        dst.close()
    return target.stat().st_size


def backup(data_dir: Path, archive: Path, *, sqlite_path: Path | None, now_ms: int) -> BackupResult:
    """Write the archive (atomically: a temporary file renamed at the end)."""
    started = time.monotonic()
    if not data_dir.is_dir():
        raise BackupError(f"no data folder at {data_dir}: pass --data-dir")
    archive = archive.expanduser().resolve()
    if archive.is_relative_to(data_dir):
        raise BackupError("write the backup outside the data folder (it would contain itself)")
    archive.parent.mkdir(parents=True, exist_ok=True)
    files = list(_files(data_dir))
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": __version__,
        "created_ms": now_ms,
        "store": "sqlite" if sqlite_path is not None else "postgresql",
        "files": [str(p.relative_to(data_dir)) for p in files],
    }
    with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".planty-backup-") as tmp:
        store_bytes = 0
        snap = Path(tmp) / STORE_FILE
        if sqlite_path is not None:
            store_bytes = snapshot_sqlite(sqlite_path, snap)
        partial = Path(tmp) / "archive.tar.gz"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # secrets inside
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar,
        ):
            body = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(body), now_ms // 1000, 0o600
            tar.addfile(info, io.BytesIO(body))
            if sqlite_path is not None:
                tar.add(snap, arcname=STORE_FILE, recursive=False)
            for p in files:
                tar.add(p, arcname=str(p.relative_to(data_dir)), recursive=False)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, archive)
    return BackupResult(
        archive,
        len(files),
        store_bytes,
        archive.stat().st_size,
        time.monotonic() - started,
        manifest["store"],
    )


def read_manifest(archive: Path) -> dict[str, Any]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            f = tar.extractfile(tar.getmember(MANIFEST))
            manifest: dict[str, Any] = json.loads(f.read() if f is not None else b"")
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise BackupError(f"{archive} is not a Planty Broker backup ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(
            f"{archive} has backup format {manifest.get('format')!r}; this version reads {FORMAT}"
        )
    return manifest


def restore(archive: Path, data_dir: Path, *, force: bool, now_ms: int) -> dict[str, Any]:
    """Unpack into a stopped data folder. A folder that holds data is refused unless
    `force`, and then moved aside to `<folder>.before-restore-<time>` (nothing deleted)."""
    archive = archive.expanduser().resolve()
    manifest = read_manifest(archive)
    data_dir = data_dir.expanduser().resolve()
    held = [p for p in data_dir.iterdir() if p.name != LOCK_FILE] if data_dir.is_dir() else []
    lock = lock_data_dir(data_dir)
    if lock is None:
        raise BackupError(
            f"a gateway is running on {data_dir}: stop it first "
            "(systemctl stop planty-broker, or Ctrl+C), then restore"
        )
    with lock:
        moved_to = None
        if held:
            if not force:
                raise BackupError(
                    f"{data_dir} is not empty; pass --force to move its content aside "
                    f"(to {data_dir.name}.before-restore-...) and restore"
                )
            moved_to = data_dir.with_name(f"{data_dir.name}.before-restore-{now_ms // 1000}")
            moved_to.mkdir(mode=0o700)
            for p in held:
                shutil.move(str(p), moved_to / p.name)
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.name != MANIFEST]
            bad = [m.name for m in members if not (m.isfile() or m.isdir())]
            if bad:
                raise BackupError(f"{archive}: unexpected entries {bad[:3]}")
            try:
                tar.extractall(data_dir, members=members, filter="data")
            except tarfile.TarError as exc:  # e.g. a path leaving the folder
                raise BackupError(f"{archive}: refused entry: {exc}") from exc
        for p in data_dir.rglob("*"):
            if p.is_file():
                p.chmod(0o600)
        data_dir.chmod(0o711)
    return {"manifest": manifest, "moved_to": moved_to}
