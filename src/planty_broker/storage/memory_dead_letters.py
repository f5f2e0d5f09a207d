"""`DeadLetterStore` in memory: the fake beside `sql_dead_letters`, same order and ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from planty_broker.domain.dead_letters import DeadLetter

if TYPE_CHECKING:
    from planty_broker.ports.store import DeadLetterStore


class MemoryDeadLetterStore:
    """Dead letters in a list; `fail_with` makes every write raise (tests of the writers)."""

    def __init__(self) -> None:
        self._rows: list[DeadLetter] = []
        self._next_id = 1
        self.fail_with: Exception | None = None

    async def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        for d in letters:
            self._rows.append(replace(d, id=self._next_id))
            self._next_id += 1

    async def list_dead_letters(
        self, device_id: str | None, before_id: int | None, limit: int
    ) -> list[DeadLetter]:
        found = [
            d
            for d in reversed(self._rows)
            if (device_id is None or d.device_id == device_id)
            and (before_id is None or d.id < before_id)
        ]
        return found[: max(limit, 0)]

    async def purge_dead_letters(self, device_id: str | None, through_id: int | None) -> int:
        def gone(d: DeadLetter) -> bool:
            return (device_id is None or d.device_id == device_id) and (
                through_id is None or d.id <= through_id
            )

        before = len(self._rows)
        self._rows = [d for d in self._rows if not gone(d)]
        return before - len(self._rows)

    async def prune_dead_letters(self, before_ms: int, limit: int) -> int:
        old = [d.id for d in self._rows if d.at_ms < before_ms][:limit]
        drop = set(old)
        self._rows = [d for d in self._rows if d.id not in drop]
        return len(old)

    async def dead_letter_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in self._rows:
            key = d.device_id or ""
            counts[key] = counts.get(key, 0) + 1
        return counts


if TYPE_CHECKING:
    _check: DeadLetterStore = MemoryDeadLetterStore()
