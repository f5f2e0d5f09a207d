"""`AccessStateStore` on SQL: pairing codes, counters and the claim window
(tables of 0010), shared by every gateway instance on one PostgreSQL (or one SQLite file).

Runs on a `SqlStore`'s worker thread (`SqlStore.run`, one transaction per call);
`storage.memory_access.MemoryAccessStore` is the fake beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from planty_broker.domain.identity import ClaimWindow, StoredPairingCode
from planty_broker.ports.store import AccessStateStore
from planty_broker.storage.schema_access import (
    access_counters,
    claim_window,
    pairing_codes,
)

if TYPE_CHECKING:
    from planty_broker.storage.sql import SqlStore

_WINDOW_ROW = "broker"


class SqlAccessStore:
    """`AccessStateStore` on the gateway's `SqlStore` (SQLite or PostgreSQL)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def add_pairing_code(self, code: StoredPairingCode, *, keep: int) -> None:
        t = pairing_codes.c

        def run(c: Connection) -> None:
            c.execute(
                pairing_codes.insert().values(
                    id=code.id,
                    digest=code.digest,
                    created_ms=code.created_ms,
                    expires_ms=code.expires_ms,
                )
            )
            kept = select(t.id).order_by(t.created_ms.desc(), t.id.desc()).limit(keep)
            c.execute(pairing_codes.delete().where(t.id.not_in(kept.scalar_subquery())))

        await self._store.run(run)

    async def pairing_codes(self) -> list[StoredPairingCode]:
        t = pairing_codes.c
        q = select(t.id, t.digest, t.created_ms, t.expires_ms).order_by(
            t.created_ms.desc(), t.id.desc()
        )
        rows = await self._store.run(lambda c: c.execute(q).all())
        return [StoredPairingCode(*r) for r in rows]

    async def clear_pairing_codes(self) -> None:
        await self._store.run(lambda c: c.execute(pairing_codes.delete()))

    async def add_counts(self, counts: Mapping[str, int]) -> None:
        todo = sorted((k, v) for k, v in counts.items() if v)
        if not todo:
            return
        t = access_counters.c

        def run(c: Connection) -> None:
            for name, by in todo:
                done = c.execute(
                    update(access_counters).where(t.name == name).values(value=t.value + by)
                )
                if not done.rowcount:
                    c.execute(access_counters.insert().values(name=name, value=by))

        await self._store.run(run)

    async def counts(self) -> dict[str, int]:
        q = select(access_counters.c.name, access_counters.c.value)
        rows = await self._store.run(lambda c: c.execute(q).all())
        return {r.name: int(r.value) for r in rows}

    async def get_claim_window(self) -> ClaimWindow | None:
        row = await self._store.run(lambda c: c.execute(_WINDOW_Q).first())
        return None if row is None else ClaimWindow(*row)

    async def open_claim_window(self, at_ms: int, until_ms: int, max_claims: int) -> ClaimWindow:
        t = claim_window.c

        def run(c: Connection) -> ClaimWindow:
            row = c.execute(_WINDOW_Q.with_for_update()).first()
            was_open = row is not None and ClaimWindow(*row).open_at(at_ms)
            window = ClaimWindow(
                row.opened_ms if row is not None and was_open else at_ms,
                until_ms,
                None,
                0,  # each opening a fresh count
                max_claims,
            )
            values = {
                "opened_ms": window.opened_ms,
                "until_ms": window.until_ms,
                "closed_ms": None,
                "claims": 0,
                "max_claims": max_claims,
            }
            if row is None:
                c.execute(claim_window.insert().values(id=_WINDOW_ROW, **values))
            else:
                c.execute(update(claim_window).where(t.id == _WINDOW_ROW).values(**values))
            return window

        return await self._store.run(run)

    async def close_claim_window(self, at_ms: int, *, expired_only: bool = False) -> bool:
        t = claim_window.c
        q = update(claim_window).where(t.id == _WINDOW_ROW, t.closed_ms.is_(None))
        if expired_only:
            q = q.where(t.until_ms <= at_ms)
        done = await self._store.run(lambda c: c.execute(q.values(closed_ms=at_ms)))
        return bool(done.rowcount)

    async def take_claim(self, at_ms: int) -> ClaimWindow | None:
        t = claim_window.c
        q = (
            update(claim_window)
            .where(
                t.id == _WINDOW_ROW,
                t.closed_ms.is_(None),
                t.until_ms > at_ms,
                t.claims < t.max_claims,
            )
            .values(claims=t.claims + 1)
        )

        def run(c: Connection) -> ClaimWindow | None:
            if not c.execute(q).rowcount:  # one statement: atomic on SQLite and PostgreSQL
                return None
            row = c.execute(_WINDOW_Q).first()
            return None if row is None else ClaimWindow(*row)

        return await self._store.run(run)

    async def give_back_claim(self) -> None:
        t = claim_window.c
        q = (
            update(claim_window)
            .where(t.id == _WINDOW_ROW, t.claims > 0)
            .values(claims=t.claims - 1)
        )
        await self._store.run(lambda c: c.execute(q))


_w = claim_window.c
_WINDOW_Q = select(_w.opened_ms, _w.until_ms, _w.closed_ms, _w.claims, _w.max_claims).where(
    _w.id == _WINDOW_ROW
)

if TYPE_CHECKING:
    _sql_check: AccessStateStore = SqlAccessStore(None)  # type: ignore[arg-type]
