"""`DeadLetterStore` on SQL (table of 0007), on a `SqlStore`'s worker thread (`SqlStore.run`).

`storage.memory_dead_letters.MemoryDeadLetterStore` is the fake beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection

from planty_broker.domain.dead_letters import DeadLetter
from planty_broker.ports.store import DeadLetterStore
from planty_broker.storage.schema_dead_letters import dead_letters

if TYPE_CHECKING:
    from planty_broker.storage.sql import SqlStore

_C = dead_letters.c


def _values(d: DeadLetter) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "topic": d.topic,
        "payload": d.payload,
        "size": d.size,
        "error": d.error,
        "at_ms": d.at_ms,
    }


class SqlDeadLetterStore:
    """Dead letters in the SQL store's database."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        rows = [_values(d) for d in letters]
        await self._store.run(lambda c: c.execute(insert(dead_letters), rows))

    async def list_dead_letters(
        self, device_id: str | None, before_id: int | None, limit: int
    ) -> list[DeadLetter]:
        q = select(*dead_letters.c).order_by(_C.id.desc()).limit(max(limit, 0))
        if device_id is not None:
            q = q.where(_C.device_id == device_id)
        if before_id is not None:
            q = q.where(_C.id < before_id)

        def run(c: Connection) -> list[DeadLetter]:
            return [
                DeadLetter(
                    device_id=r.device_id,
                    topic=r.topic,
                    payload=bytes(r.payload),
                    size=r.size,
                    error=r.error,
                    at_ms=r.at_ms,
                    id=r.id,
                )
                for r in c.execute(q)
            ]

        return await self._store.run(run)

    async def purge_dead_letters(self, device_id: str | None, through_id: int | None) -> int:
        q = delete(dead_letters)
        if device_id is not None:
            q = q.where(_C.device_id == device_id)
        if through_id is not None:
            q = q.where(_C.id <= through_id)
        return int(await self._store.run(lambda c: c.execute(q).rowcount))

    async def prune_dead_letters(self, before_ms: int, limit: int) -> int:
        ids = select(_C.id).where(_C.at_ms < before_ms).order_by(_C.id).limit(limit)
        q = delete(dead_letters).where(_C.id.in_(ids.scalar_subquery()))
        return int(await self._store.run(lambda c: c.execute(q).rowcount))

    async def dead_letter_counts(self) -> dict[str, int]:
        q = select(_C.device_id, func.count()).group_by(_C.device_id)
        found = await self._store.run(lambda c: c.execute(q).all())
        return {(d or ""): int(n) for d, n in found}


if TYPE_CHECKING:
    _check: DeadLetterStore = SqlDeadLetterStore(None)  # type: ignore[arg-type]
