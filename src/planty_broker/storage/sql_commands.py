"""The command outbox on SQL: a batch of changes = rows + history + events, one transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from sqlalchemy import JSON, Engine, delete, literal, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Dialect

from planty_broker.domain.commands import (
    FINAL_STATES,
    CommandChange,
    CommandRecord,
    CommandState,
    CommandTransition,
    SendLeases,
    event_data,
)
from planty_broker.storage.schema_core import devices
from planty_broker.storage.schema_queue import command_leases, command_transitions, commands
from planty_broker.storage.sql_events import insert_events
from planty_broker.storage.sql_rows import insert_sql

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode
_FINAL = [s.value for s in FINAL_STATES]
_ACTIVE = [CommandState.QUEUED.value, CommandState.SENT.value]
# Hot path: plain executemany of tuples, as for readings (SQLAlchemy's per-row parameter
# processing cost more than the rows themselves). JSON values go in as text.
COMMAND_COLUMNS = tuple(c.name for c in commands.c)
_UPDATED = tuple(n for n in COMMAND_COLUMNS if n not in ("id", "device_id", "created_ms"))
_JSON_COLUMNS = frozenset(n for n in COMMAND_COLUMNS if isinstance(commands.c[n].type, JSON))
TRANSITION_COLUMNS = ("command_id", "state", "at_ms", "attempt", "detail")


@dataclass(frozen=True, slots=True)
class _Sql:
    insert: str
    update: str
    transition: str


_sql_cache: dict[str, _Sql] = {}


def _sql_for(dialect: Dialect) -> _Sql:
    found = _sql_cache.get(dialect.name)
    if found is None:
        quote = dialect.identifier_preparer.quote
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        pg = dialect.name == "postgresql"
        sets = ", ".join(
            f"{quote(n)} = {mark}::jsonb" if pg and n in _JSON_COLUMNS else f"{quote(n)} = {mark}"
            for n in _UPDATED
        )
        # Only our own schema's names go into the text; values are bound.
        update_sql = f"UPDATE {quote(commands.name)} SET {sets} WHERE {quote('id')} = {mark}"  # noqa: S608
        found = _sql_cache[dialect.name] = _Sql(
            insert_sql(dialect, commands, COMMAND_COLUMNS),
            update_sql,
            insert_sql(dialect, command_transitions, TRANSITION_COLUMNS),
        )
    return found


def _json_text(value: Any) -> str | None:
    return None if value is None else _encode(value).decode()


def command_params(r: CommandRecord, columns: Sequence[str] = COMMAND_COLUMNS) -> tuple[Any, ...]:
    values = command_values(r)
    return tuple(_json_text(values[n]) if n in _JSON_COLUMNS else values[n] for n in columns)


def command_values(r: CommandRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "device_id": r.device_id,
        "action": r.action,
        "args": r.args,
        "origin": r.origin,
        "state": r.state.value,
        "created_ms": r.created_ms,
        "exp_ms": r.exp_ms,
        "updated_ms": r.updated_ms,
        "attempts": r.attempts,
        "sent_ms": r.sent_ms,
        "last_sent_ms": r.last_sent_ms,
        "final_ms": r.final_ms,
        "result": r.result,
        "error": r.error,
        "superseded_by": r.superseded_by,
        "rtt_ms": r.rtt_ms,
        "late_ack": r.late_ack,
    }


def command(r: Any) -> CommandRecord:
    """A row of `select(*commands.c)`."""
    m = r._mapping
    return CommandRecord(
        id=m["id"],
        device_id=m["device_id"],
        action=m["action"],
        args=m["args"] if m["args"] is not None else {},
        created_ms=m["created_ms"],
        exp_ms=m["exp_ms"],
        state=CommandState(m["state"]),
        updated_ms=m["updated_ms"],
        origin=m["origin"],
        attempts=m["attempts"],
        sent_ms=m["sent_ms"],
        last_sent_ms=m["last_sent_ms"],
        final_ms=m["final_ms"],
        result=m["result"],
        error=m["error"],
        superseded_by=m["superseded_by"],
        rtt_ms=m["rtt_ms"],
        late_ack=m["late_ack"],
    )


def _write(conn: Connection, changes: Sequence[CommandChange]) -> None:
    latest: dict[str, CommandRecord] = {}
    new_ids: set[str] = set()
    for ch in changes:
        latest[ch.record.id] = ch.record
        if ch.new:
            new_ids.add(ch.record.id)
    sql = _sql_for(conn.dialect)
    inserts = [command_params(latest[cid]) for cid in latest if cid in new_ids]
    updates = [
        (*command_params(r, _UPDATED), cid) for cid, r in latest.items() if cid not in new_ids
    ]
    if inserts:
        conn.exec_driver_sql(sql.insert, inserts)
    if updates:
        conn.exec_driver_sql(sql.update, updates)
    conn.exec_driver_sql(
        sql.transition,
        [
            (t.command_id, t.state, t.at_ms, t.attempt, t.detail)
            for t in (ch.transition for ch in changes)
        ],
    )
    insert_events(
        conn,
        [
            (
                ch.transition.at_ms,
                "command",
                ch.record.device_id,
                _encode(event_data(ch)).decode(),
            )
            for ch in changes
        ],
    )


def _apply(engine: Engine, changes: Sequence[CommandChange]) -> None:
    try:
        with engine.begin() as conn:
            _write(conn, changes)
        return
    except sa_exc.IntegrityError:
        pass  # a device (and so its commands) was removed while changes were queued
    with engine.begin() as conn:
        device_ids = {ch.record.device_id for ch in changes}
        known = set(conn.scalars(select(devices.c.id).where(devices.c.id.in_(device_ids))))
        old = {ch.record.id for ch in changes if not ch.new}
        existing = set(conn.scalars(select(commands.c.id).where(commands.c.id.in_(old))))
        keep = [
            ch
            for ch in changes
            if ch.record.device_id in known and (ch.new or ch.record.id in existing)
        ]
        if keep:
            _write(conn, keep)


def _lease(
    conn: Connection, ids: Sequence[str], owner: str, now_ms: int, until_ms: int
) -> SendLeases:
    """One transaction: renew or take over the lease rows this owner may have, create missing
    ones. On PostgreSQL the existing rows are read `FOR UPDATE SKIP LOCKED`: a row another
    instance is leasing right now is left to it (refused here), never waited for."""
    lc = command_leases.c
    wanted = list(dict.fromkeys(ids))
    pg = conn.dialect.name == "postgresql"
    rows_q = select(lc.command_id, lc.owner, lc.until_ms).where(lc.command_id.in_(wanted))
    if pg:  # SQLite: the write transaction is already exclusive
        rows_q = rows_q.with_for_update(skip_locked=True)
        # No fsync per lease: a lease lost to a PostgreSQL crash is harmless, since the crash
        # also ends every instance's session lease and the outbox holder stops with it.
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
    rows = {r.command_id: r for r in conn.execute(rows_q)}
    free = [cid for cid, r in rows.items() if r.owner == owner or r.until_ms < now_ms]
    held = {cid: r.until_ms for cid, r in rows.items() if r.owner != owner and r.until_ms >= now_ms}
    if free:
        conn.execute(
            update(command_leases)
            .where(lc.command_id.in_(free))
            .values(owner=owner, until_ms=until_ms)
        )
    granted = set(free)
    absent = [cid for cid in wanted if cid not in rows]  # no lease row yet, or skipped (locked)
    if absent:
        ins = (pg_insert if pg else sqlite_insert)(command_leases)
        # Only for stored commands; a row that exists (skipped above: locked) stays as it is.
        q = (
            ins.from_select(
                ["command_id", "owner", "until_ms"],
                select(commands.c.id, literal(owner), literal(until_ms))
                .where(commands.c.id.in_(absent))
                .order_by(commands.c.id),  # one order for every instance: no deadlock
            )
            .on_conflict_do_nothing()
            .returning(lc.command_id)
        )
        granted.update(conn.execute(q).scalars())
    return SendLeases(frozenset(granted), held)


class SqlCommandsMixin:
    """`CommandStore` methods of `SqlStore` (which provides `_call` and `_in_tx`)."""

    _call: Callable[..., Awaitable[Any]]

    @staticmethod
    def _in_tx(engine: Engine, fn: Callable[[Connection], T]) -> T:
        raise NotImplementedError  # provided by SqlStore

    async def apply_command_changes(self, changes: Sequence[CommandChange]) -> None:
        if changes:
            await self._call(_apply, list(changes))

    async def get_command(self, command_id: str) -> CommandRecord | None:
        q = select(*commands.c).where(commands.c.id == command_id)
        row = await self._call(self._in_tx, lambda c: c.execute(q).first())
        return None if row is None else command(row)

    async def list_commands(
        self, device_id: str | None, states: Sequence[str] | None, limit: int
    ) -> list[CommandRecord]:
        if limit <= 0:
            return []
        c = commands.c
        q = select(*commands.c)
        if device_id is not None:
            q = q.where(c.device_id == device_id)
        if states:
            q = q.where(c.state.in_(list(states)))
        q = q.order_by(c.created_ms.desc(), c.id.desc()).limit(limit)
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [command(r) for r in rows]

    async def active_commands(self) -> list[CommandRecord]:
        c = commands.c
        q = select(*commands.c).where(c.state.in_(_ACTIVE)).order_by(c.created_ms, c.id)
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [command(r) for r in rows]

    async def command_history(self, command_id: str) -> list[CommandTransition]:
        t = command_transitions.c
        q = (
            select(t.command_id, t.state, t.at_ms, t.attempt, t.detail)
            .where(t.command_id == command_id)
            .order_by(t.id)
        )
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [CommandTransition(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def prune_commands(self, final_before_ms: int, limit: int) -> int:
        c = commands.c
        ids = (
            select(c.id)
            .where(c.state.in_(_FINAL), c.updated_ms < final_before_ms)
            .limit(limit)
            .scalar_subquery()
        )
        q = delete(commands).where(c.id.in_(ids))
        count = await self._call(self._in_tx, lambda conn: conn.execute(q).rowcount)
        return int(count)

    async def lease_commands(
        self, ids: Sequence[str], owner: str, now_ms: int, until_ms: int
    ) -> SendLeases:
        if not ids:
            return SendLeases(frozenset(), {})
        answer: SendLeases = await self._call(
            self._in_tx, lambda conn: _lease(conn, ids, owner, now_ms, until_ms)
        )
        return answer
