"""Long-term history on SQL: hourly rollups of readings and the retention of raw readings,
rollups and presence transitions (`HistoryStore`).

Rolling up follows the readings' ids (their arrival order) with a watermark in `meta`,
moved in the same transaction as the rollups it produced, so a reading is folded in
exactly once, even across a crash. Raw readings are deleted only up to the watermark:
nothing goes before it is rolled up. Deletions run in small transactions (by id range,
or per device on the primary key) so ingest never waits long behind them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from planty_broker.domain.history import HistoryUsage, HourlyRollup, roll_up
from planty_broker.storage.schema_core import devices, meta, presence, readings
from planty_broker.storage.schema_history import reading_rollups
from planty_broker.storage.sql_events import keep_reading_events

T = TypeVar("T")

ROLLED_KEY = "history.rolled_through_id"
DELETE_CHUNK = 10_000  # ids per delete transaction

_COLUMNS = (
    "device_id",
    "hour_ms",
    "sensor",
    "n",
    "min_value",
    "max_value",
    "sum_value",
    "last_value",
    "last_ts_ms",
)


def meta_int(conn: Connection, key: str) -> int:
    value = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()
    return int(value) if isinstance(value, int | float) else 0


def set_meta_int(conn: Connection, key: str, value: int) -> None:
    if conn.execute(update(meta).where(meta.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(insert(meta).values(key=key, value=value))


def _upsert_sql(dialect: str, paramstyle: str) -> str:
    """INSERT ... ON CONFLICT merging a partial rollup into the stored one (same on both
    databases but for the two-argument min/max: LEAST/GREATEST on PostgreSQL)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    lo, hi = ("LEAST", "GREATEST") if dialect == "postgresql" else ("min", "max")
    t = "reading_rollups"
    # Only our own table, column and function names go into the text; values are bound.
    marks = ", ".join([mark] * len(_COLUMNS))
    return (
        f"INSERT INTO {t} ({', '.join(_COLUMNS)}) VALUES ({marks}) "  # noqa: S608
        "ON CONFLICT (device_id, hour_ms, sensor) DO UPDATE SET "
        f"n = {t}.n + excluded.n, "
        f"min_value = {lo}({t}.min_value, excluded.min_value), "
        f"max_value = {hi}({t}.max_value, excluded.max_value), "
        f"sum_value = {t}.sum_value + excluded.sum_value, "
        f"last_value = CASE WHEN excluded.last_ts_ms >= {t}.last_ts_ms "
        f"THEN excluded.last_value ELSE {t}.last_value END, "
        f"last_ts_ms = {hi}({t}.last_ts_ms, excluded.last_ts_ms)"
    )


def _params(r: HourlyRollup) -> tuple[Any, ...]:
    return (r.device_id, r.hour_ms, r.sensor, r.count, r.min, r.max, r.sum, r.last, r.last_ts_ms)


def roll_up_sync(conn: Connection, arrived_before_ms: int, limit: int) -> int:
    """Fold the next readings after the watermark (in id order, stopping at the first that
    arrived at or after the time) into the rollups; move the watermark."""
    r = readings.c
    through = meta_int(conn, ROLLED_KEY)
    found = conn.execute(
        select(r.id, r.device_id, r.ts_ms, r.received_ms, r["values"])
        .where(r.id > through)
        .order_by(r.id)
        .limit(limit)
    ).all()
    taken = []
    for row in found:
        if row[3] >= arrived_before_ms:
            break
        taken.append(row)
    if not taken:
        return 0
    rollups = roll_up((row[1], row[2], row[4]) for row in taken)
    if rollups:
        sql = _upsert_sql(conn.dialect.name, conn.dialect.paramstyle)
        conn.exec_driver_sql(sql, [_params(x) for x in rollups.values()])
    set_meta_int(conn, ROLLED_KEY, taken[-1][0])
    return len(taken)


def prune_readings_sync(engine: Engine, arrived_before_ms: int, limit: int) -> int:
    """Delete rolled-up readings older than the time, oldest ids first, one chunk per
    transaction; stops at the first chunk with nothing old enough."""
    r = readings.c
    total = 0
    while total < limit:
        with engine.begin() as conn:
            through = meta_int(conn, ROLLED_KEY)
            lo = conn.execute(select(func.min(r.id))).scalar()
            if lo is None or lo > through:
                break
            hi = min(lo + DELETE_CHUNK - 1, through)
            doomed = (r.id >= lo, r.id <= hi, r.received_ms < arrived_before_ms)
            keep_reading_events(conn, *doomed)  # events still in the log stay there
            n = conn.execute(delete(readings).where(*doomed)).rowcount
        total += n
        if n == 0:
            break
    return total


def prune_rollups_sync(conn: Connection, hour_before_ms: int) -> int:
    """Per device on the primary key (device, hour, sensor): no scan of other devices."""
    ids = conn.scalars(select(devices.c.id)).all()
    c = reading_rollups.c
    total = 0
    for device_id in ids:
        q = delete(reading_rollups).where(c.device_id == device_id, c.hour_ms < hour_before_ms)
        total += conn.execute(q).rowcount
    return total


def prune_presence_sync(conn: Connection, before_ms: int, limit: int) -> int:
    """Per device on (device, at_ms), keeping the newest transition (the current state)."""
    ids = conn.scalars(select(devices.c.id)).all()
    c = presence.c
    total = 0
    for device_id in ids:
        if total >= limit:
            break
        newest = (
            select(c.id)
            .where(c.device_id == device_id)
            .order_by(c.at_ms.desc(), c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        q = delete(presence).where(c.device_id == device_id, c.at_ms < before_ms, c.id != newest)
        total += conn.execute(q).rowcount
    return total


def hourly_sync(
    conn: Connection, device_id: str, since_ms: int | None, until_ms: int | None, limit: int
) -> list[HourlyRollup]:
    c = reading_rollups.c
    where = [c.device_id == device_id]
    if since_ms is not None:
        where.append(c.hour_ms >= since_ms)
    if until_ms is not None:
        where.append(c.hour_ms <= until_ms)
    hours = (
        select(c.hour_ms).where(*where).distinct().order_by(c.hour_ms.desc()).limit(limit)
    ).subquery()
    first = select(func.min(hours.c.hour_ms)).scalar_subquery()
    q = (
        select(*(c[name] for name in _COLUMNS))
        .where(*where, c.hour_ms >= first)
        .order_by(c.hour_ms, c.sensor)
    )
    return [
        HourlyRollup(
            device_id=row[0],
            hour_ms=row[1],
            sensor=row[2],
            count=row[3],
            min=row[4],
            max=row[5],
            sum=row[6],
            last=row[7],
            last_ts_ms=row[8],
        )
        for row in conn.execute(q).all()
    ]


def usage_sync(conn: Connection) -> HistoryUsage:
    def count(table: Any) -> int:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    return HistoryUsage(
        readings=count(readings),
        rollups=count(reading_rollups),
        presence=count(presence),
        rolled_through_id=meta_int(conn, ROLLED_KEY),
    )


class SqlHistoryMixin:
    """`HistoryStore` methods of `SqlStore` (which provides `_call` and `_in_tx`)."""

    _call: Callable[..., Awaitable[Any]]

    @staticmethod
    def _in_tx(engine: Engine, fn: Callable[[Connection], T]) -> T:
        raise NotImplementedError  # provided by SqlStore

    async def roll_up_readings(self, arrived_before_ms: int, limit: int) -> int:
        n: int = await self._call(
            self._in_tx, lambda conn: roll_up_sync(conn, arrived_before_ms, limit)
        )
        return n

    async def hourly_readings(
        self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[HourlyRollup]:
        if limit <= 0:
            return []
        found: list[HourlyRollup] = await self._call(
            self._in_tx, lambda conn: hourly_sync(conn, device_id, since_ms, until_ms, limit)
        )
        return found

    async def prune_readings(self, arrived_before_ms: int, limit: int) -> int:
        n: int = await self._call(prune_readings_sync, arrived_before_ms, limit)
        return n

    async def prune_rollups(self, hour_before_ms: int) -> int:
        n: int = await self._call(
            self._in_tx, lambda conn: prune_rollups_sync(conn, hour_before_ms)
        )
        return n

    async def prune_presence(self, before_ms: int, limit: int) -> int:
        n: int = await self._call(
            self._in_tx, lambda conn: prune_presence_sync(conn, before_ms, limit)
        )
        return n

    async def history_usage(self) -> HistoryUsage:
        usage: HistoryUsage = await self._call(self._in_tx, usage_sync)
        return usage
