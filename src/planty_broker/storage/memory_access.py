"""`AccessStateStore` in memory: the fast fake beside `storage.sql_access`, for unit tests.

Several services sharing one `MemoryAccessStore` behave as several gateway instances
sharing one database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from planty_broker.domain.identity import ClaimWindow, StoredPairingCode

if TYPE_CHECKING:
    from planty_broker.ports.store import AccessStateStore


class MemoryAccessStore:
    """`AccessStateStore` in lists and dictionaries, for unit tests."""

    def __init__(self) -> None:
        self._codes: list[StoredPairingCode] = []  # newest first
        self._counts: dict[str, int] = {}
        self._window: ClaimWindow | None = None

    async def add_pairing_code(self, code: StoredPairingCode, *, keep: int) -> None:
        self._codes.insert(0, code)
        self._codes.sort(key=lambda c: (c.created_ms, c.id), reverse=True)
        del self._codes[keep:]

    async def pairing_codes(self) -> list[StoredPairingCode]:
        return list(self._codes)

    async def clear_pairing_codes(self) -> None:
        self._codes.clear()

    async def add_counts(self, counts: Mapping[str, int]) -> None:
        for name, by in counts.items():
            if by:
                self._counts[name] = self._counts.get(name, 0) + by

    async def counts(self) -> dict[str, int]:
        return dict(self._counts)

    async def get_claim_window(self) -> ClaimWindow | None:
        return self._window

    async def open_claim_window(self, at_ms: int, until_ms: int, max_claims: int) -> ClaimWindow:
        w = self._window
        opened = w.opened_ms if w is not None and w.open_at(at_ms) else at_ms
        self._window = ClaimWindow(opened, until_ms, None, 0, max_claims)
        return self._window

    async def close_claim_window(self, at_ms: int, *, expired_only: bool = False) -> bool:
        w = self._window
        if w is None or w.closed_ms is not None or (expired_only and w.until_ms > at_ms):
            return False
        self._window = dataclasses.replace(w, closed_ms=at_ms)
        return True

    async def take_claim(self, at_ms: int) -> ClaimWindow | None:
        w = self._window
        if w is None or not w.open_at(at_ms) or w.claims >= w.max_claims:
            return None
        self._window = dataclasses.replace(w, claims=w.claims + 1)
        return self._window

    async def give_back_claim(self) -> None:
        w = self._window
        if w is not None and w.claims > 0:
            self._window = dataclasses.replace(w, claims=w.claims - 1)


if TYPE_CHECKING:
    _memory_check: AccessStateStore = MemoryAccessStore()
