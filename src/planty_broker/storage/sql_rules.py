"""The rules and their history on SQL: rule rows, history lines and their `rule` events.

A history line and its event in the log are written in one transaction, so the
event log's consumers (SSE, Firestore) and `GET /rules/{id}/history` never disagree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.engine import Connection

from planty_broker.domain.rules.records import (
    RULE_EVENT_TYPE,
    HistoryOutcome,
    RuleEvent,
    StoredRule,
)
from planty_broker.storage.schema_rules import rule_history, rules
from planty_broker.storage.sql_events import insert_events

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode
_FIRE = HistoryOutcome.FIRE.value


def _history(r: Any) -> RuleEvent:
    m = r._mapping
    return RuleEvent(
        rule_id=m["rule_id"],
        device_id=m["device_id"],
        at_ms=m["at_ms"],
        outcome=m["outcome"],
        data=m["data"] if m["data"] is not None else {},
        id=m["id"],
    )


def _append(conn: Connection, events: Sequence[RuleEvent]) -> None:
    if not events:
        return
    conn.execute(
        insert(rule_history),
        [
            {
                "rule_id": e.rule_id,
                "device_id": e.device_id,
                "at_ms": e.at_ms,
                "outcome": e.outcome,
                "data": e.data,
            }
            for e in events
        ],
    )
    insert_events(
        conn,
        [(e.at_ms, RULE_EVENT_TYPE, e.device_id, _encode(e.data).decode()) for e in events],
    )


def _save(conn: Connection, put: Sequence[StoredRule], remove: Sequence[str]) -> None:
    if remove:
        conn.execute(delete(rules).where(rules.c.id.in_(list(remove))))
    for r in put:
        done = conn.execute(
            update(rules)
            .where(rules.c.id == r.id)
            .values(data=r.data, origin=r.origin, updated_ms=r.updated_ms)
        )
        if not done.rowcount:
            conn.execute(
                insert(rules).values(
                    id=r.id,
                    data=r.data,
                    origin=r.origin,
                    created_ms=r.created_ms,
                    updated_ms=r.updated_ms,
                )
            )


class SqlRulesMixin:
    """`RuleStore` methods of `SqlStore` (which provides `_call` and `_in_tx`)."""

    _call: Callable[..., Awaitable[Any]]

    @staticmethod
    def _in_tx(engine: Engine, fn: Callable[[Connection], T]) -> T:
        raise NotImplementedError  # provided by SqlStore

    async def list_rules(self) -> list[StoredRule]:
        c = rules.c
        q = select(c.id, c.data, c.origin, c.created_ms, c.updated_ms).order_by(c.id)
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [StoredRule(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def save_rules(self, put: Sequence[StoredRule], delete: Sequence[str] = ()) -> None:
        if put or delete:
            await self._call(self._in_tx, lambda conn: _save(conn, list(put), list(delete)))

    async def append_rule_history(self, events: Sequence[RuleEvent]) -> None:
        if events:
            await self._call(self._in_tx, lambda conn: _append(conn, list(events)))

    async def rule_history(
        self,
        rule_id: str,
        *,
        device_id: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[RuleEvent]:
        if limit <= 0:
            return []
        c = rule_history.c
        q = select(*rule_history.c).where(c.rule_id == rule_id)
        if device_id is not None:
            q = q.where(c.device_id == device_id)
        if since_ms is not None:
            q = q.where(c.at_ms >= since_ms)
        if until_ms is not None:
            q = q.where(c.at_ms <= until_ms)
        if before_id is not None:
            q = q.where(c.id < before_id)
        q = q.order_by(c.id.desc()).limit(limit)
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [_history(r) for r in rows]

    async def rule_fires_since(self, since_ms: int) -> list[RuleEvent]:
        c = rule_history.c
        q = (
            select(*rule_history.c)
            .where(c.at_ms >= since_ms, c.outcome == _FIRE)
            .order_by(c.at_ms, c.id)
        )
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [_history(r) for r in rows]

    async def prune_rule_history(self, before_ms: int, limit: int) -> int:
        c = rule_history.c
        ids = select(c.id).where(c.at_ms < before_ms).limit(limit).scalar_subquery()
        q = delete(rule_history).where(c.id.in_(ids))
        count = await self._call(self._in_tx, lambda conn: conn.execute(q).rowcount)
        return int(count)
