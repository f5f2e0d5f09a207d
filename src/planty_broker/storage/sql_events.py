"""The event log on SQL: append (also from the readings/presence/command transactions),
read by cursor, named consumers, retention by prefix deletion.

Ids come from the database in insert order. SQLite has one writer, so ids commit in
order. On PostgreSQL several transactions could take ids and commit out of order,
and a reader could pass an id that commits later; every transaction that appends
events therefore takes one transaction-level advisory lock first, so the log grows
strictly in id order there too (cost: appends of all instances serialise).
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
    KeepRule,
    LogBounds,
    NewEvent,
    PruneResult,
)
from planty_broker.domain.models import PresenceTransition, Reading
from planty_broker.storage.schema_core import meta
from planty_broker.storage.schema_queue import event_consumers, events
from planty_broker.storage.sql_rows import insert_sql

T = TypeVar("T")

EVENT_COLUMNS = ("at_ms", "type", "device_id", "data")
PRUNED_KEY = "events.pruned_through"
UNCONFIRMED_KEY = "events.deleted_unconfirmed"
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
    return LogBounds(
        first_id=first,
        last_id=max(last or 0, pruned),
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
    unconfirmed = 0
    if lowest is not None:
        unconfirmed = conn.execute(select(func.count()).where(doomed, c.id > lowest)).scalar_one()
    for name, cursor in consumers:
        n = conn.execute(select(func.count()).where(doomed, c.id > cursor)).scalar_one()
        if n:
            dropped[name] = n
            conn.execute(
                update(event_consumers)
                .where(event_consumers.c.name == name)
                .values(dropped=event_consumers.c.dropped + n)
            )
    deleted = conn.execute(delete(events).where(doomed)).rowcount
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
        c = events.c
        q = select(c.id, c.at_ms, c.type, c.device_id, c.data).where(c.id > after)
        if types:
            q = q.where(c.type.in_(list(types)))
        q = q.order_by(c.id).limit(limit)
        found = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [_event(r) for r in found]

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
        found = await self._call(self._in_tx, lambda conn: conn.execute(q).scalar())
        return int(found or 0)
