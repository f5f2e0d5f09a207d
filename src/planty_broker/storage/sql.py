"""SQL adapter of the storage port: SQLite (embedded default) or PostgreSQL (several instances).

One sync SQLAlchemy Core engine (built by `sql_engine`), used only from ONE dedicated
worker thread: the event loop never blocks on the database, SQLite sees a single
writer, and calls are served in the order they were made. Every write commits
before its coroutine returns; a batch is one transaction and one executemany.
Driver failures become `StoreUnavailableError` with one line saying what to do
(`sql_errors`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from alembic.util.exc import CommandError
from sqlalchemy import Engine, bindparam, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from planty_broker.domain.models import DeviceRecord, PresenceTransition, Reading
from planty_broker.ports.store import (
    CommandStore,
    DeviceExistsError,
    EventStore,
    HistoryStore,
    RuleStore,
    Store,
    StoreConfigError,
    StoreRejectedError,
    StoreUnavailableError,
)
from planty_broker.storage import migrate
from planty_broker.storage import sql_rows as rows
from planty_broker.storage.schema import devices, meta, presence
from planty_broker.storage.schema import readings as readings_table
from planty_broker.storage.sql_commands import SqlCommandsMixin
from planty_broker.storage.sql_engine import check_synchronous, create_store_engine, normalize_url
from planty_broker.storage.sql_errors import REFUSED_PYTHON, Target, driver_error, refused
from planty_broker.storage.sql_events import (
    SqlEventsMixin,
    adopt_reading_events,
    insert_events,
    keep_reading_events,
    presence_event_params,
    reserve_event_ids,
)
from planty_broker.storage.sql_firmware import SqlFirmwareMixin
from planty_broker.storage.sql_history import SqlHistoryMixin
from planty_broker.storage.sql_rules import SqlRulesMixin
from planty_broker.text import plural

T = TypeVar("T")
# A device record to render the columns of a partial update (`patch_device`) from.
_BLANK = DeviceRecord(id="", created_at_ms=0, token_hash="")
log = logging.getLogger(__name__)

# SQLAlchemy's wrappers of the DB-API classes that always mean "this data / this statement".
_REFUSED_SA = (
    sa_exc.IntegrityError,
    sa_exc.ProgrammingError,
    sa_exc.DataError,
    sa_exc.NotSupportedError,
)


def _device_columns(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The column values of a device record's named fields (and only those), as stored."""
    full = rows.device_values(dataclasses.replace(_BLANK, **changes))
    return {k: full[k] for k in changes}


class SqlStore(SqlCommandsMixin, SqlEventsMixin, SqlRulesMixin, SqlFirmwareMixin, SqlHistoryMixin):
    """The `Store` port on SQLite or PostgreSQL; an async context manager (open/close).

    The command outbox and the event log (`CommandStore`, `EventStore`) come from the mixins,
    and so do the threshold rules and their history (`RuleStore`), the firmware releases
    and rollouts (`FirmwareStore`) and the long-term history of readings with the retention
    of raw data (`HistoryStore`).
    """

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL") -> None:
        self._target = Target(normalize_url(url))
        self._synchronous = check_synchronous(sqlite_synchronous)
        self._engine: Engine | None = None
        self._insert_readings = ""
        self._insert_presence = ""
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

    async def add_devices(self, devices_: Sequence[DeviceRecord]) -> None:
        if devices_:
            await self._call(self._add_devices, list(devices_))

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

    async def patch_device(self, device_id: str, changes: Mapping[str, Any]) -> None:
        """Write only the named fields; a device removed meanwhile stays removed (no-op)."""
        if not changes:
            return
        q = update(devices).where(devices.c.id == device_id).values(**_device_columns(changes))
        await self._call(self._in_tx, lambda c: c.execute(q))

    async def patch_devices(self, patches: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """One transaction; one executemany per set of fields named (statuses name the same
        few, so usually one). A device's patches are merged first, later ones winning."""
        merged: dict[str, dict[str, Any]] = {}
        for device_id, changes in patches:
            if changes:
                merged.setdefault(device_id, {}).update(changes)
        if not merged:
            return
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for device_id, changes in merged.items():
            values = _device_columns(changes)
            keys = tuple(sorted(values))
            params = {f"v_{k}": values[k] for k in keys}
            params["p_id"] = device_id
            groups.setdefault(keys, []).append(params)

        def run(conn: Connection) -> None:
            for keys, params in groups.items():
                q = (
                    update(devices)
                    .where(devices.c.id == bindparam("p_id"))
                    .values({k: bindparam(f"v_{k}", type_=devices.c[k].type) for k in keys})
                )
                conn.execute(q, params)

        await self._call(self._in_tx, run)

    async def remove_device(self, device_id: str) -> bool:
        """Its rows go with it (cascade); its readings' events stay in the event log."""
        q = devices.delete().where(devices.c.id == device_id)

        def run(conn: Connection) -> bool:
            keep_reading_events(conn, readings_table.c.device_id == device_id)
            return bool(conn.execute(q).rowcount)

        removed: bool = await self._call(self._in_tx, run)
        return removed

    # telemetry ----------------------------------------------------------------

    async def append_readings(self, readings: Sequence[Reading]) -> list[Reading]:
        """One transaction, one executemany; readings of devices removed meanwhile are dropped,
        and so is a reading already stored (same device, boot and seq: `ON CONFLICT DO
        NOTHING`). Returns the readings stored now, in order.

        Each stored reading is its own `reading` event: its id is taken from the event
        log's ids in the same transaction (`sql_events`), so no second row is written.
        """
        if not readings:
            return []
        try:  # JSON of the values: a lone surrogate in a name cannot be encoded
            params = [rows.reading_params(r) for r in readings]
        except REFUSED_PYTHON as exc:
            raise self._rejected(exc) from exc
        stored = await self._call(self._append_once, self._insert_readings, params)
        if stored is None:
            return list(readings)
        return [readings[i] for i in stored]

    async def query_readings(
        self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[Reading]:
        """Readings with since_ms <= ts_ms <= until_ms (either bound optional), newest last."""
        if limit <= 0:
            return []
        c = readings_table.c
        q = select(c.device_id, c.seq, c.ts_ms, c.received_ms, c["values"], c.boot).where(
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
        q = select(c.device_id, c.seq, c.ts_ms, c.received_ms, c["values"], c.boot).join_from(
            devices, readings_table, c.id == newest
        )
        found = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return {r[0]: rows.reading(r) for r in found}

    # presence -----------------------------------------------------------------

    async def append_presence(self, transitions: Sequence[PresenceTransition]) -> None:
        """One transaction (with their `presence` events); removed devices' rows are dropped."""
        if transitions:
            params = [rows.presence_params(t) for t in transitions]
            events = [presence_event_params(t) for t in transitions]
            await self._call(self._append, self._insert_presence, params, events)

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

    async def replace_meta(self, key: str, expected: Any | None, value: Any) -> bool:
        ins = (pg_insert if self.dialect == "postgresql" else sqlite_insert)(meta)

        def run(c: Connection) -> bool:
            if expected is None:  # only if absent: the insert of a racing writer wins
                q_ins = ins.values(key=key, value=value).on_conflict_do_nothing()
                return c.execute(q_ins.returning(meta.c.key)).first() is not None
            q = select(meta.c.value).where(meta.c.key == key)
            if self.dialect == "postgresql":
                q = q.with_for_update()  # SQLite: the write transaction is already exclusive
            if c.execute(q).scalar() != expected:
                return False
            c.execute(update(meta).where(meta.c.key == key).values(value=value))
            return True

        return bool(await self._call(self._in_tx, run))

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
        """Run `fn`, turning driver failures into our store errors (one clear line each),
        classified by `sql_errors.refused`: data or SQL the database refuses for good ->
        StoreRejectedError (permanent), everything else it says -> StoreUnavailableError
        (transient: the same call may succeed later)."""
        try:
            return fn()
        except sa_exc.DBAPIError as exc:
            orig = exc.orig if exc.orig is not None else exc
            if isinstance(exc, _REFUSED_SA) or refused(self._target, orig):
                raise self._rejected(orig) from exc
            raise driver_error(self._target, orig, lost=exc.connection_invalidated) from exc
        except sa_exc.StatementError as exc:  # a non-driver error while binding, wrapped
            inner: BaseException = exc.orig if exc.orig is not None else exc
            if refused(self._target, inner):
                raise self._rejected(inner) from exc
            raise
        except REFUSED_PYTHON as exc:  # raised by the driver while binding
            raise self._rejected(exc) from exc
        except sqlite3.Error as exc:
            if refused(self._target, exc):
                raise self._rejected(exc) from exc
            raise driver_error(self._target, exc) from exc
        except CommandError as exc:
            raise StoreConfigError(
                f"the database {self.safe_url} has a schema this version does not know "
                f"({exc}): upgrade planty-broker or use another store.url"
            ) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                if refused(self._target, exc):
                    raise self._rejected(exc) from exc
                raise driver_error(self._target, exc) from exc
            raise

    def _rejected(self, orig: BaseException) -> StoreRejectedError:
        return StoreRejectedError(
            f"the store {self.safe_url} refused the data: {self._target.scrub(str(orig))}"
        )

    @staticmethod
    def _in_tx(engine: Engine, fn: Callable[[Connection], T]) -> T:
        with engine.begin() as conn:
            return fn(conn)

    @staticmethod
    def _add_devices(engine: Engine, batch: list[DeviceRecord]) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(insert(devices), [rows.device_values(d) for d in batch])
        except sa_exc.IntegrityError:
            raise DeviceExistsError("a device of the batch is already registered") from None

    @staticmethod
    def _add_device(engine: Engine, device: DeviceRecord) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(insert(devices), [rows.device_values(device)])
        except sa_exc.IntegrityError:
            raise DeviceExistsError(f"device {device.id!r} is already registered") from None

    @staticmethod
    def _append(
        engine: Engine,
        sql: str,
        params: list[tuple[Any, ...]],
        events: list[tuple[Any, ...]] | None = None,
    ) -> None:
        """executemany in one transaction; params start with the device id.

        `events[i]` (if given) is the event of `params[i]`, appended in the same transaction.
        """
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(sql, params)
                if events:
                    insert_events(conn, events)
            return
        except sa_exc.IntegrityError:
            pass  # a device was removed while its rows were queued: keep the others
        with engine.begin() as conn:
            ids = {p[0] for p in params}
            known = set(conn.scalars(select(devices.c.id).where(devices.c.id.in_(ids))))
            kept = [i for i, p in enumerate(params) if p[0] in known]
            keep = [params[i] for i in kept]
            if keep:
                conn.exec_driver_sql(sql, keep)
                if events:
                    insert_events(conn, [events[i] for i in kept])
        log.warning(
            "dropped %s of unknown (removed) devices: %s",
            plural(len(params) - len(keep), "row"),
            ", ".join(sorted(ids - known)[:10]),
        )

    @staticmethod
    def _append_once(engine: Engine, sql: str, params: list[tuple[Any, ...]]) -> list[int] | None:
        """Readings with ids from the event log (each is its own event) and `ON CONFLICT DO
        NOTHING` in `sql` (unique device, boot, seq): the indexes of the rows inserted (None:
        all of them, the usual case).

        One executemany in one transaction; only if it inserted fewer rows than given (a row
        already stored, twice in the batch, or of a removed device) is it rolled back and done
        row by row. A skipped row's reserved id is never used (a gap; cursors skip it).
        """

        def insert_all(conn: Connection, some: list[tuple[Any, ...]]) -> int:
            first = reserve_event_ids(conn, len(some))
            done = conn.exec_driver_sql(sql, [(first + i, *p) for i, p in enumerate(some)])
            return int(done.rowcount)

        try:
            with engine.connect() as conn, conn.begin() as tx:
                if insert_all(conn, params) == len(params):
                    return None  # committed on leaving the block
                tx.rollback()
        except sa_exc.IntegrityError:
            pass  # a device was removed while its rows were queued: keep the others
        with engine.begin() as conn:
            ids = {p[0] for p in params}
            known = set(conn.scalars(select(devices.c.id).where(devices.c.id.in_(ids))))
            stored = [
                i for i, p in enumerate(params) if p[0] in known and insert_all(conn, [p])
            ]
        if ids - known:
            log.warning(
                "dropped readings of unknown (removed) devices: %s",
                ", ".join(sorted(ids - known)[:10]),
            )
        return stored

    def _open_sync(self) -> Engine:
        engine = create_store_engine(self._target, self._synchronous)
        try:
            with engine.begin() as conn:
                migrate.upgrade(conn)
                adopt_reading_events(conn)  # in the same transaction: under the migration lock
        except BaseException:
            engine.dispose()
            raise
        self._insert_readings = rows.insert_sql(
            engine.dialect, readings_table, ("id", *rows.READING_COLUMNS), skip_conflicts=True
        )
        self._insert_presence = rows.insert_sql(engine.dialect, presence, rows.PRESENCE_COLUMNS)
        return engine


def open_store(url: str) -> SqlStore:
    """A (not yet opened) store for a SQLAlchemy URL or a plain SQLite file path.

    Use as `async with open_store(settings.store_url) as store: ...`.
    """
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    return SqlStore(url)


if TYPE_CHECKING:
    _port_check: Store = SqlStore("sqlite://")
    _commands_check: CommandStore = SqlStore("sqlite://")
    _events_check: EventStore = SqlStore("sqlite://")
    _rules_check: RuleStore = SqlStore("sqlite://")
    _history_check: HistoryStore = SqlStore("sqlite://")
