"""The event log on SQL: append (also from the readings/presence/command transactions),
read by cursor, named consumers, retention by prefix deletion.

Ids come from the database in insert order. SQLite has one writer, so ids commit in
order. On PostgreSQL several transactions could take ids and commit out of order,
and a reader could pass an id that commits later; every transaction that appends
events therefore takes one transaction-level advisory lock first, so the log grows
strictly in id order there too (cost: appends of all instances serialise).

A reading's event is stored by reference (issue 17): the reading row itself, whose id is
taken from the event log's id sequence (`reserve_event_ids`), is its `reading` event; no
second row is written. The log is the union of the `events` rows and the readings with
an id above the log's floor (`READINGS_FROM_KEY`: readings stored before this existed
have their event as a row; `PRUNED_KEY`: retention moved past them). A reading deleted
while its event is still in the log (device removed, raw readings retention) first gets
its event written out as a row with the same id (`keep_reading_events`), so consumers see
the same events either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
from sqlalchemy import ColumnElement, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Dialect

from planty_broker.domain.events import (
    Consumer,
    Event,
    EventType,
    KeepRule,
    LogBounds,
    NewEvent,
    PruneResult,
)
from planty_broker.domain.models import PresenceTransition, Reading
from planty_broker.storage.schema_core import meta, readings
from planty_broker.storage.schema_queue import event_consumers, events
from planty_broker.storage.sql_rows import insert_sql

T = TypeVar("T")

EVENT_COLUMNS = ("at_ms", "type", "device_id", "data")
PRUNED_KEY = "events.pruned_through"
UNCONFIRMED_KEY = "events.deleted_unconfirmed"
READINGS_FROM_KEY = "events.readings_from"  # readings with a larger id are their own events
READING = EventType.READING.value
_PG_EVENTS_LOCK = 0x706C616E747965  # "plantye": one lock for every instance's appends

_encode = msgspec.json.Encoder().encode
_insert_sql: dict[str, str] = {}


def _sql_for(dialect: Dialect) -> str:
    sql = _insert_sql.get(dialect.name)
    if sql is None:
        sql = _insert_sql[dialect.name] = insert_sql(dialect, events, EVENT_COLUMNS)
    return sql


def insert_events(conn: Connection, params: Sequence[tuple[Any, ...]]) -> None:
    """Append events (params in EVENT_COLUMNS order, data as JSON text) in the caller's tx."""
    if not params:
        return
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_EVENTS_LOCK})")
    conn.exec_driver_sql(_sql_for(conn.dialect), list(params))


def reserve_event_ids(conn: Connection, n: int) -> int:
    """Take `n` consecutive ids of the event log for readings (their events by reference), in
    the caller's transaction; returns the first. Later events get larger ids. Ids start above
    every reading id too, whatever else wrote readings (an older version, a tool)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_EVENTS_LOCK})")
        last = conn.exec_driver_sql(
            "SELECT setval(pg_get_serial_sequence('events', 'id'), "
            "GREATEST(nextval(pg_get_serial_sequence('events', 'id')), "
            "(SELECT COALESCE(MAX(id), 0) FROM readings) + 1) + %s - 1)",
            (n,),
        ).scalar_one()
        return int(last) - n + 1
    # SQLite's AUTOINCREMENT keeps the largest id ever given in sqlite_sequence (never reused);
    # plain SQL text: this runs once per batch on the hot path
    seq, newest = conn.exec_driver_sql(
        "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'events'), "
        "(SELECT MAX(id) FROM readings)"
    ).one()
    first = max(seq or 0, newest or 0) + 1
    if seq is None:
        conn.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (first + n - 1,)
        )
    else:
        conn.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (first + n - 1,)
        )
    return int(first)


def adopt_reading_events(conn: Connection) -> None:
    """Once per database (at open, under the migration lock): the readings stored so far
    have their events as rows; readings stored from now on are their own events, with ids
    above every reading id so far."""
    if conn.execute(select(meta.c.key).where(meta.c.key == READINGS_FROM_KEY)).first():
        return
    newest = int(conn.execute(select(func.max(readings.c.id))).scalar() or 0)
    _set_meta_int(conn, READINGS_FROM_KEY, newest)
    if not newest:
        return
    if conn.dialect.name == "postgresql":
        seq = conn.exec_driver_sql("SELECT pg_get_serial_sequence('events', 'id')").scalar_one()
        last = conn.exec_driver_sql(f"SELECT last_value FROM {seq}").scalar_one()  # noqa: S608
        if newest > last:
            conn.exec_driver_sql("SELECT setval(%s::regclass, %s)", (seq, newest))
        return
    seq = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'events'").scalar()
    if seq is None:
        conn.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (newest,)
        )
    elif seq < newest:
        conn.exec_driver_sql("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (newest,))


def log_floor(conn: Connection) -> int:
    """Readings with an id above this are events in the log."""
    return max(_meta_int(conn, READINGS_FROM_KEY), _meta_int(conn, PRUNED_KEY))


def _reading_columns() -> tuple[Any, ...]:
    r = readings.c
    return (r.id, r.received_ms, r.device_id, r.seq, r.ts_ms, r["values"])


def _reading_event(r: Sequence[Any]) -> Event:
    """A row of `_reading_columns()` as its `reading` event (the data a row would hold)."""
    data = {"seq": r[3], "ts_ms": r[4], "readings": r[5]}
    return Event(id=r[0], at_ms=r[1], type=READING, device_id=r[2], data=data)


def keep_reading_events(conn: Connection, *where: ColumnElement[bool]) -> int:
    """Before readings matching `where` are deleted: those whose events are still in the log
    get them written as rows (same ids), so the log does not change. Returns how many."""
    r = readings.c
    q = select(*_reading_columns()).where(r.id > log_floor(conn), *where).order_by(r.id)
    found = [_reading_event(row) for row in conn.execute(q)]
    if not found:
        return 0
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_EVENTS_LOCK})")
    conn.execute(
        insert(events),
        [
            {"id": e.id, "at_ms": e.at_ms, "type": e.type, "device_id": e.device_id, "data": e.data}
            for e in found
        ],
    )
    return len(found)


def read(conn: Connection, after: int, limit: int, types: Sequence[str] | None) -> list[Event]:
    """Events with id > after, oldest first: rows of `events` merged with readings' events."""
    c = events.c
    q = select(c.id, c.at_ms, c.type, c.device_id, c.data).where(c.id > after)
    if types:
        q = q.where(c.type.in_(list(types)))
    found = [_event(r) for r in conn.execute(q.order_by(c.id).limit(limit))]
    if types and READING not in types:
        return found
    r = readings.c
    floor = max(after, log_floor(conn))
    rq = select(*_reading_columns()).where(r.id > floor).order_by(r.id).limit(limit)
    by_ref = [_reading_event(row) for row in conn.execute(rq)]
    if not by_ref:
        return found
    if not found:
        return by_ref
    return sorted(found + by_ref, key=lambda e: e.id)[:limit]


def _readings_between(conn: Connection, after: int, through: int) -> int:
    """Readings' events with after < id <= through (count)."""
    if through <= after:
        return 0
    r = readings.c
    q = select(func.count()).select_from(readings).where(r.id > after, r.id <= through)
    return int(conn.execute(q).scalar_one())


def reading_id_before(conn: Connection, at_ms: int) -> int:
    """The newest reading event stored (arrived) before `at_ms`, 0 if none: a binary search
    on the ids, which follow arrival (readings get ids in the order they are stored)."""
    r = readings.c
    floor = log_floor(conn)
    first = conn.execute(
        select(r.id, r.received_ms).where(r.id > floor).order_by(r.id).limit(1)
    ).first()
    if first is None or first[1] >= at_ms:
        return 0
    lo, hi = int(first[0]), int(conn.execute(select(func.max(r.id))).scalar_one())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        row = conn.execute(
            select(r.id, r.received_ms).where(r.id >= mid).order_by(r.id).limit(1)
        ).one()
        if row[1] < at_ms:
            lo = int(row[0])
        else:
            hi = mid - 1
    return lo


def event_params(e: NewEvent) -> tuple[Any, ...]:
    return (e.at_ms, e.type, e.device_id, _encode(e.data).decode())


def reading_event_params(r: Reading) -> tuple[Any, ...]:
    data = {"seq": r.seq, "ts_ms": r.ts_ms, "readings": r.values}
    return (r.received_ms, "reading", r.device_id, _encode(data).decode())


def presence_event_params(t: PresenceTransition) -> tuple[Any, ...]:
    data = {"state": t.state.value, "cause": t.cause.value}
    return (t.at_ms, "presence", t.device_id, _encode(data).decode())


def _event(r: Sequence[Any]) -> Event:
    return Event(id=r[0], at_ms=r[1], type=r[2], device_id=r[3], data=r[4])


def _consumer(r: Sequence[Any]) -> Consumer:
    return Consumer(name=r[0], cursor=r[1], created_ms=r[2], updated_ms=r[3], dropped=r[4])


def _meta_int(conn: Connection, key: str) -> int:
    value = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()
    return int(value) if isinstance(value, int | float) else 0


def _set_meta_int(conn: Connection, key: str, value: int) -> None:
    if conn.execute(update(meta).where(meta.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(insert(meta).values(key=key, value=value))


def bounds(conn: Connection) -> LogBounds:
    first, last = conn.execute(select(func.min(events.c.id), func.max(events.c.id))).one()
    pruned = _meta_int(conn, PRUNED_KEY)
    r = readings.c
    floor = max(pruned, _meta_int(conn, READINGS_FROM_KEY))
    r_first, r_last = conn.execute(select(func.min(r.id), func.max(r.id)).where(r.id > floor)).one()
    if r_first is not None:
        first = r_first if first is None else min(first, r_first)
    return LogBounds(
        first_id=first,
        last_id=max(last or 0, r_last or 0, pruned),
        pruned_through=pruned,
        deleted_unconfirmed=_meta_int(conn, UNCONFIRMED_KEY),
    )


def prune(conn: Connection, through_id: int, keep: KeepRule | None = None) -> PruneResult:
    """Delete ids <= through_id but those `keep` spares (older spared ones go once they are
    past it); add each consumer's unconfirmed losses to its `dropped`."""
    c = events.c
    doomed: ColumnElement[bool] = c.id <= through_id
    if keep is not None and keep.types:
        doomed = and_(doomed, or_(c.type.not_in(keep.types), c.at_ms < keep.after_ms))
    dropped: dict[str, int] = {}
    consumers = conn.execute(
        select(event_consumers.c.name, event_consumers.c.cursor).where(
            event_consumers.c.cursor < through_id
        )
    ).all()
    lowest = min((cursor for _, cursor in consumers), default=None)
    floor = log_floor(conn)  # readings' events after it and through `through_id` leave the log
    unconfirmed = 0
    if lowest is not None:
        unconfirmed = conn.execute(select(func.count()).where(doomed, c.id > lowest)).scalar_one()
        unconfirmed += _readings_between(conn, max(floor, lowest), through_id)
    for name, cursor in consumers:
        n = conn.execute(select(func.count()).where(doomed, c.id > cursor)).scalar_one()
        n += _readings_between(conn, max(floor, cursor), through_id)
        if n:
            dropped[name] = n
            conn.execute(
                update(event_consumers)
                .where(event_consumers.c.name == name)
                .values(dropped=event_consumers.c.dropped + n)
            )
    deleted = conn.execute(delete(events).where(doomed)).rowcount
    deleted += _readings_between(conn, floor, through_id)  # the readings stay, their events go
    if through_id > _meta_int(conn, PRUNED_KEY):
        _set_meta_int(conn, PRUNED_KEY, through_id)
    if unconfirmed:
        _set_meta_int(conn, UNCONFIRMED_KEY, _meta_int(conn, UNCONFIRMED_KEY) + unconfirmed)
    return PruneResult(deleted, through_id, dropped, unconfirmed)


class SqlEventsMixin:
    """`EventStore` methods of `SqlStore` (which provides `_call` and `_in_tx`)."""

    _call: Callable[..., Awaitable[Any]]

    @staticmethod
    def _in_tx(engine: Engine, fn: Callable[[Connection], T]) -> T:
        raise NotImplementedError  # provided by SqlStore

    async def append_events(self, new: Sequence[NewEvent]) -> None:
        if new:
            params = [event_params(e) for e in new]
            await self._call(self._in_tx, lambda conn: insert_events(conn, params))

    async def read_events(
        self, after: int, limit: int, types: Sequence[str] | None = None
    ) -> list[Event]:
        if limit <= 0:
            return []
        found: list[Event] = await self._call(
            self._in_tx, lambda conn: read(conn, after, limit, types)
        )
        return found

    async def event_bounds(self) -> LogBounds:
        result: LogBounds = await self._call(self._in_tx, bounds)
        return result

    async def set_consumer_cursor(self, name: str, acked: int, now_ms: int) -> Consumer:
        t = event_consumers

        def run(conn: Connection) -> Consumer:
            q = update(t).where(t.c.name == name).values(cursor=acked, updated_ms=now_ms)
            if conn.execute(q).rowcount == 0:
                conn.execute(
                    insert(t).values(
                        name=name, cursor=acked, created_ms=now_ms, updated_ms=now_ms, dropped=0
                    )
                )
            return _consumer(conn.execute(select(*t.c).where(t.c.name == name)).one())

        result: Consumer = await self._call(self._in_tx, run)
        return result

    async def get_consumer(self, name: str) -> Consumer | None:
        t = event_consumers
        q = select(*t.c).where(t.c.name == name)
        row = await self._call(self._in_tx, lambda conn: conn.execute(q).first())
        return None if row is None else _consumer(row)

    async def list_consumers(self) -> list[Consumer]:
        q = select(*event_consumers.c).order_by(event_consumers.c.name)
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [_consumer(r) for r in rows]

    async def delete_consumer(self, name: str) -> bool:
        q = delete(event_consumers).where(event_consumers.c.name == name)
        count = await self._call(self._in_tx, lambda conn: conn.execute(q).rowcount)
        return bool(count)

    async def prune_events(self, through_id: int, keep: KeepRule | None = None) -> PruneResult:
        result: PruneResult = await self._call(
            self._in_tx, lambda conn: prune(conn, through_id, keep)
        )
        return result

    async def event_id_before(self, at_ms: int) -> int:
        q = select(func.max(events.c.id)).where(events.c.at_ms < at_ms)

        def run(conn: Connection) -> int:
            return max(int(conn.execute(q).scalar() or 0), reading_id_before(conn, at_ms))

        found: int = await self._call(self._in_tx, run)
        return found
