"""SQL adapter of the storage port: SQLite (embedded default) or PostgreSQL (several instances).

One sync SQLAlchemy Core engine, used only from ONE dedicated worker thread: the
event loop never blocks on the database, SQLite sees a single writer, and calls are
served in the order they were made. Every write commits before its coroutine
returns. SQLite runs in WAL mode with `synchronous=FULL` (a commit survives kill -9
and power loss), `BEGIN IMMEDIATE` transactions (migrations are atomic too) and
foreign keys on, so removing a device removes its rows.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import msgspec
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, make_url

from planty_broker.domain.models import DeviceRecord, PresenceTransition, Reading
from planty_broker.storage import migrate
from planty_broker.storage import sql_rows as rows
from planty_broker.storage.port import (
    DeviceExistsError,
    Store,
    StoreError,
    StoreUnavailableError,
)
from planty_broker.storage.schema import devices, meta, presence
from planty_broker.storage.schema import readings as readings_table
from planty_broker.storage.sql_errors import Target, driver_error, os_error

T = TypeVar("T")
log = logging.getLogger(__name__)

SQLITE_SYNCHRONOUS = ("FULL", "EXTRA", "NORMAL")


def _json_dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def normalize_url(url: str) -> URL:
    """Parse a store URL; `postgres://` and `postgresql://` mean psycopg 3."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise StoreError(
            "store.url is not a valid URL: use sqlite:///path/to/file.sqlite3 or "
            "postgresql://user@host:5432/dbname"
        ) from None
    backend = parsed.get_backend_name()
    driver = parsed.drivername.partition("+")[2]
    if backend in ("postgres", "postgresql") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and parsed.get_driver_name() == "pysqlite":
        return parsed
    raise StoreError(
        f"store.url {parsed.render_as_string(hide_password=True)!r} is not supported: "
        "use sqlite:///path/to/file.sqlite3 or postgresql://user@host:5432/dbname"
    )


class SqlStore:
    """The `Store` port on SQLite or PostgreSQL; an async context manager (open/close)."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL") -> None:
        self._target = Target(normalize_url(url))
        if sqlite_synchronous.upper() not in SQLITE_SYNCHRONOUS:
            raise StoreError(f"sqlite_synchronous must be one of {', '.join(SQLITE_SYNCHRONOUS)}")
        self._synchronous = sqlite_synchronous.upper()
        self._busy_timeout_ms = 10_000
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"SqlStore({self._target.safe_url()!r})"

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return "sqlite" if self._target.is_sqlite else "postgresql"

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, for logs and messages."""
        return self._target.safe_url()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # lifecycle ----------------------------------------------------------------

    async def open(self) -> None:
        """Connect, then migrate the schema to the newest revision (no-op if current)."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="planty-store")
        try:
            self._engine = await self._submit(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        """Finish queued work, close the connections (SQLite checkpoints its WAL)."""
        executor, engine = self._executor, self._engine
        self._executor, self._engine = None, None
        if executor is None:
            return
        try:
            if engine is not None:
                await asyncio.get_running_loop().run_in_executor(executor, engine.dispose)
        finally:
            executor.shutdown(wait=False)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(conn)` on the store thread in one transaction, committed on return.

        The building block for features that add their own tables; driver errors
        become `StoreUnavailableError`.
        """
        return await self._call(self._in_tx, fn)

    # devices ------------------------------------------------------------------

    async def add_device(self, device: DeviceRecord) -> None:
        await self._call(self._add_device, device)

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        q = select(*devices.c).where(devices.c.id == device_id)
        found = await self._call(self._in_tx, lambda c: c.execute(q).first())
        return None if found is None else rows.device(found)

    async def list_devices(self) -> list[DeviceRecord]:
        found = await self._call(self._in_tx, lambda c: c.execute(select(*devices.c)).all())
        return sorted((rows.device(r) for r in found), key=lambda d: d.id)

    async def update_device(self, device: DeviceRecord) -> None:
        """Replace the record; a device removed meanwhile stays removed (no-op)."""
        values = rows.device_values(device)
        del values["id"]
        q = update(devices).where(devices.c.id == device.id).values(**values)
        await self._call(self._in_tx, lambda c: c.execute(q))

    async def remove_device(self, device_id: str) -> bool:
        q = devices.delete().where(devices.c.id == device_id)
        count = await self._call(self._in_tx, lambda c: c.execute(q).rowcount)
        return bool(count)

    # telemetry ----------------------------------------------------------------

    async def append_readings(self, readings: Sequence[Reading]) -> None:
        """One transaction, one executemany; readings of devices removed meanwhile are dropped."""
        if readings:
            values = [rows.reading_values(r) for r in readings]
            await self._call(self._append, readings_table, values)

    async def query_readings(
        self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[Reading]:
        """Readings with since_ms <= ts_ms <= until_ms (either bound optional), newest last."""
        if limit <= 0:
            return []
        c = readings_table.c
        q = select(c.device_id, c.seq, c.ts_ms, c.received_ms, c["values"]).where(
            c.device_id == device_id
        )
        if since_ms is not None:
            q = q.where(c.ts_ms >= since_ms)
        if until_ms is not None:
            q = q.where(c.ts_ms <= until_ms)
        q = q.order_by(c.ts_ms.desc(), c.id.desc()).limit(limit)
        found = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [rows.reading(r) for r in reversed(found)]

    async def latest_readings(self) -> dict[str, Reading]:
        c, n = readings_table.c, readings_table.alias("newest").c
        newest = (
            select(n.id)
            .where(n.device_id == devices.c.id)
            .order_by(n.ts_ms.desc(), n.id.desc())
            .limit(1)
            .correlate(devices)
            .scalar_subquery()
        )
        q = select(c.device_id, c.seq, c.ts_ms, c.received_ms, c["values"]).join_from(
            devices, readings_table, c.id == newest
        )
        found = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return {r[0]: rows.reading(r) for r in found}

    # presence -----------------------------------------------------------------

    async def append_presence(self, transitions: Sequence[PresenceTransition]) -> None:
        """One transaction; transitions of devices removed meanwhile are dropped."""
        if transitions:
            await self._call(self._append, presence, [rows.presence_values(t) for t in transitions])

    async def last_presence(self) -> dict[str, PresenceTransition]:
        c, n = presence.c, presence.alias("newest").c
        newest = (
            select(n.id)
            .where(n.device_id == devices.c.id)
            .order_by(n.at_ms.desc(), n.id.desc())
            .limit(1)
            .correlate(devices)
            .scalar_subquery()
        )
        q = select(c.device_id, c.state, c.at_ms, c.cause).join_from(
            devices, presence, c.id == newest
        )
        found = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return {r[0]: rows.transition(r) for r in found}

    async def presence_history(
        self, device_id: str, since_ms: int | None, until_ms: int | None
    ) -> list[PresenceTransition]:
        """Transitions with since_ms <= at_ms <= until_ms (either bound optional), oldest first."""
        c = presence.c
        q = select(c.device_id, c.state, c.at_ms, c.cause).where(c.device_id == device_id)
        if since_ms is not None:
            q = q.where(c.at_ms >= since_ms)
        if until_ms is not None:
            q = q.where(c.at_ms <= until_ms)
        q = q.order_by(c.at_ms, c.id)
        found = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [rows.transition(r) for r in found]

    # meta ---------------------------------------------------------------------

    async def get_meta(self, key: str) -> Any | None:
        q = select(meta.c.value).where(meta.c.key == key)
        return await self._call(self._in_tx, lambda c: c.execute(q).scalar())

    async def set_meta(self, key: str, value: Any) -> None:
        ins = (pg_insert if self.dialect == "postgresql" else sqlite_insert)(meta)
        q = ins.values(key=key, value=value).on_conflict_do_update(
            index_elements=[meta.c.key], set_={"value": ins.excluded.value}
        )
        await self._call(self._in_tx, lambda c: c.execute(q))

    # on the worker thread -----------------------------------------------------

    async def _submit(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreUnavailableError(f"the store {self.safe_url} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, fn)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._engine is None:
            raise StoreUnavailableError(f"the store {self.safe_url} is not open: call open() first")
        return await self._submit(partial(fn, self._engine, *args))

    def _guarded(self, fn: Callable[[], T]) -> T:
        """Run `fn`, turning driver failures into one clear StoreUnavailableError."""
        try:
            return fn()
        except (
            sa_exc.IntegrityError,
            sa_exc.ProgrammingError,
            sa_exc.DataError,
            sa_exc.NotSupportedError,
        ):
            raise  # a bug or bad input, not an unavailable database
        except sa_exc.DBAPIError as exc:
            orig = exc.orig if exc.orig is not None else exc
            raise driver_error(self._target, orig, lost=exc.connection_invalidated) from exc
        except sqlite3.Error as exc:
            raise driver_error(self._target, exc) from exc
        except CommandError as exc:
            raise StoreError(
                f"the database {self.safe_url} has a schema this version does not know "
                f"({exc}): upgrade planty-broker or use another store.url"
            ) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                raise driver_error(self._target, exc) from exc
            raise

    @staticmethod
    def _in_tx(engine: Engine, fn: Callable[[Connection], T]) -> T:
        with engine.begin() as conn:
            return fn(conn)

    @staticmethod
    def _add_device(engine: Engine, device: DeviceRecord) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(insert(devices), [rows.device_values(device)])
        except sa_exc.IntegrityError:
            raise DeviceExistsError(f"device {device.id!r} is already registered") from None

    @staticmethod
    def _append(engine: Engine, table: Any, values: list[dict[str, Any]]) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(insert(table), values)
            return
        except sa_exc.IntegrityError:
            pass  # a device was removed while its rows were queued: keep the others
        with engine.begin() as conn:
            ids = {v["device_id"] for v in values}
            known = set(conn.scalars(select(devices.c.id).where(devices.c.id.in_(ids))))
            keep = [v for v in values if v["device_id"] in known]
            if keep:
                conn.execute(insert(table), keep)
        log.warning(
            "dropped %d %s rows of unknown (removed) devices: %s",
            len(values) - len(keep),
            table.name,
            ", ".join(sorted(ids - known)[:10]),
        )

    def _open_sync(self) -> Engine:
        engine = self._create_engine()
        try:
            with engine.begin() as conn:
                migrate.upgrade(conn)
        except BaseException:
            engine.dispose()
            raise
        return engine

    def _create_engine(self) -> Engine:
        url = self._target.url
        common: dict[str, Any] = {
            "pool_size": 1,  # one worker thread: one connection is all we ever use
            "max_overflow": 0,
            "json_serializer": _json_dumps,
            "json_deserializer": msgspec.json.decode,
        }
        if not self._target.is_sqlite:
            connect_args = {"connect_timeout": 10, "application_name": "planty-broker"}
            connect_args = {k: v for k, v in connect_args.items() if k not in url.query}
            try:
                return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **common)
            except ModuleNotFoundError:
                raise StoreError(
                    "PostgreSQL support is not installed: pip install 'planty-broker[postgres]'"
                ) from None
        path = self._target.sqlite_path
        if str(path) not in ("", ":memory:"):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(self._target, exc) from exc
        engine = create_engine(url, **common)
        event.listen(engine, "connect", self._on_sqlite_connect)
        event.listen(engine, "begin", _begin_immediate)
        return engine

    def _on_sqlite_connect(self, dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _begin_immediate)
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute(f"PRAGMA synchronous = {self._synchronous}")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()


def _begin_immediate(conn: Connection) -> None:
    """Take SQLite's write lock up front: DDL is transactional, no upgrade deadlocks."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_store(url: str) -> SqlStore:
    """A (not yet opened) store for a SQLAlchemy URL or a plain SQLite file path.

    Use as `async with open_store(settings.store_url) as store: ...`.
    """
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    return SqlStore(url)


if TYPE_CHECKING:
    _port_check: Store = SqlStore("sqlite://")
