"""Build the SQLAlchemy engine of a `SqlStore`: URL rules, pool, SQLite pragmas.

SQLite: WAL (readers never block the writer), `synchronous=FULL` by default (a
committed batch survives kill -9 and power loss; NORMAL survives kill -9 only),
a busy timeout, foreign keys on (removing a device cascades), and `BEGIN
IMMEDIATE` issued by us so DDL is transactional and a transaction never has to
upgrade a read lock. PostgreSQL: psycopg 3, a connect timeout, and a ping before
reuse so a dropped connection is replaced instead of failing the next call.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url

from planty_broker.ports.store import StoreConfigError
from planty_broker.storage.sql_errors import Target, os_error

SQLITE_SYNCHRONOUS = ("FULL", "EXTRA", "NORMAL")
SQLITE_BUSY_TIMEOUT_MS = 10_000
_SUPPORTED = "use sqlite:///path/to/file.sqlite3 or postgresql://user@host:5432/dbname"


def _json_dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def normalize_url(url: str) -> URL:
    """Parse a store URL; `postgres://` and `postgresql://` mean psycopg 3."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise StoreConfigError(f"store.url is not a valid URL: {_SUPPORTED}") from None
    backend = parsed.get_backend_name()
    driver = parsed.drivername.partition("+")[2]
    if backend in ("postgres", "postgresql") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and parsed.get_driver_name() == "pysqlite":
        return parsed
    safe = parsed.render_as_string(hide_password=True)
    raise StoreConfigError(f"store.url {safe!r} is not supported: {_SUPPORTED}")


def check_synchronous(value: str) -> str:
    """The SQLite `synchronous` level, refusing levels that can lose a commit on kill -9."""
    if value.upper() not in SQLITE_SYNCHRONOUS:
        raise StoreConfigError(f"sqlite_synchronous must be one of {', '.join(SQLITE_SYNCHRONOUS)}")
    return value.upper()


def private_sqlite_files(path: Path) -> None:
    """The store file 0600 (created so if missing), and its -wal/-shm/-journal if present.

    SQLite creates -wal, -shm and -journal with the mode of the database file, so they
    follow. The store holds token hashes and every reading: nobody else reads it.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for p in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        with contextlib.suppress(FileNotFoundError, PermissionError):  # gone, or not ours
            if p.stat().st_mode & 0o077:
                p.chmod(0o600)


def create_store_engine(target: Target, synchronous: str = "FULL") -> Engine:
    """An engine with one pooled connection (the store uses it from one thread only)."""
    common: dict[str, Any] = {
        "pool_size": 1,
        "max_overflow": 0,
        "json_serializer": _json_dumps,
        "json_deserializer": msgspec.json.decode,
    }
    url = target.url
    if not target.is_sqlite:
        defaults = {"connect_timeout": 10, "application_name": "planty-broker"}
        connect_args = {k: v for k, v in defaults.items() if k not in url.query}
        try:
            return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **common)
        except ModuleNotFoundError:
            raise StoreConfigError(
                "PostgreSQL support is not installed: pip install 'planty-broker[postgres]'"
            ) from None
    path = target.sqlite_path
    if str(path) not in ("", ":memory:"):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if "mode=" not in str(target.url):  # a read-only or in-memory URI: leave it
                private_sqlite_files(path)
        except OSError as exc:
            raise os_error(target, exc) from exc
    engine = create_engine(url, **common)
    level = check_synchronous(synchronous)

    def on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _begin_immediate)
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute(f"PRAGMA synchronous = {level}")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", _begin_immediate)
    return engine


def _begin_immediate(conn: Connection) -> None:
    """Take SQLite's write lock up front: DDL is transactional, no lock-upgrade deadlocks."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")
