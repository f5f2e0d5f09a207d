"""Debounced, coalescing document writes: at most one write per document per `debounce_s`.

Every update to a document merges into its pending write, so ten readings in a
second become one write of the newest values. `flush()` commits the documents
that are due in atomic batches (<= 500 writes), oldest data first. When
Firestore is unreachable nothing is dropped: the pending writes stay (and keep
coalescing) until a flush succeeds. A write Firestore itself refuses is
dropped with one log line, so one bad document cannot stall the rest.

Writes derived from the event log carry the id of the first event they hold;
`confirmed_through(folded)` is the highest event id all of whose documents are
committed: the cursor the connector may confirm in the event log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from planty_broker.northbound.firestore.model import loggable
from planty_broker.northbound.firestore.port import (
    MAX_BATCH,
    DeleteDoc,
    FirestorePort,
    FirestoreRejectedError,
    SetDoc,
    Write,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pending:
    """What will be written to one document: maybe a delete, then a merge of `data`."""

    delete: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    first_event: int | None = None  # lowest event id folded into this write
    since_s: float = 0.0  # when it became pending
    build: Callable[[], dict[str, Any]] | None = None  # the whole document, made at flush

    def writes(self, path: str) -> list[Write]:
        out: list[Write] = []
        if self.delete:
            out.append(DeleteDoc(path))
        data = self.build() if self.build is not None else self.data
        if data or not self.delete:
            out.append(SetDoc(path, data))
        return out

    def absorb_newer(self, newer: Pending) -> None:
        """Put `newer` (queued while this one was in flight) on top of this one."""
        if newer.build is not None:
            self.build = newer.build
        if newer.delete:
            self.delete, self.data, self.build = True, newer.data, newer.build
        else:
            _merge(self.data, newer.data)
        if newer.first_event is not None and self.first_event is None:
            self.first_event = newer.first_event


def _merge(into: dict[str, Any], data: Mapping[str, Any]) -> None:
    """Firestore's merge (maps key by key), without copying: values are handed over."""
    for key, value in data.items():
        old = into.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            _merge(old, value)
        elif isinstance(value, dict):
            into[key] = dict(value)  # ours to merge into later, the caller's stays intact
        else:
            into[key] = value


class DocBuffer:
    """Pending writes by document path; see the module docstring."""

    def __init__(
        self,
        port: FirestorePort,
        debounce_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._port = port
        self._debounce = debounce_s
        self._clock = clock
        self._pending: dict[str, Pending] = {}
        self._last_write: dict[str, float] = {}
        self.writes = 0  # documents written
        self.batches = 0
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending

    def set(self, path: str, data: Mapping[str, Any], event_id: int | None = None) -> None:
        """Merge `data` into the document's pending write (the buffer keeps `data`'s values:
        hand over fresh dicts)."""
        p = self._pending.get(path)
        if p is None:
            p = self._pending[path] = Pending(since_s=self._clock())
        _merge(p.data, data)
        if event_id is not None and p.first_event is None:
            p.first_event = event_id

    def lazy(
        self, path: str, build: Callable[[], dict[str, Any]], event_id: int | None = None
    ) -> None:
        """The document's pending write is `build()`, called when it is written (a document
        of absolute figures that changes with every event, built once per write)."""
        p = self._pending.get(path)
        if p is None:
            p = self._pending[path] = Pending(since_s=self._clock())
        p.build = build
        if event_id is not None and p.first_event is None:
            p.first_event = event_id

    def delete(self, path: str) -> None:
        p = self._pending.get(path)
        if p is None:
            p = self._pending[path] = Pending(since_s=self._clock())
        p.delete, p.data = True, {}

    def confirmed_through(self, folded: int) -> int:
        """The highest event id whose documents are all committed (events <= `folded` folded)."""
        firsts = [p.first_event for p in self._pending.values() if p.first_event is not None]
        return min(folded, min(firsts) - 1) if firsts else folded

    def due(self, now: float | None = None) -> list[str]:
        """Paths whose last write is at least `debounce_s` old, oldest data first."""
        now = self._clock() if now is None else now
        ready = [
            path
            for path in self._pending
            if now - self._last_write.get(path, -1e18) >= self._debounce
        ]
        ready.sort(key=lambda p: (self._pending[p].first_event or 0, self._pending[p].since_s))
        return ready

    def next_due_in(self) -> float | None:
        """Seconds until the next pending document may be written (None: nothing pending)."""
        if not self._pending:
            return None
        now = self._clock()
        waits = [self._debounce - (now - self._last_write.get(p, -1e18)) for p in self._pending]
        return max(0.0, min(waits))

    async def flush(self, force: bool = False) -> int:
        """Commit what is due (everything with `force`); returns documents written.

        Raises the port's errors (except refusals, which drop the write) with the
        pending writes kept for the next flush.
        """
        paths = list(self._pending) if force else self.due()
        written = 0
        for i in range(0, len(paths), MAX_BATCH // 2):  # a delete + set pair is 2 writes
            chunk = paths[i : i + MAX_BATCH // 2]
            taken = {path: self._pending.pop(path) for path in chunk}
            writes = [w for path, p in taken.items() for w in p.writes(path)]
            try:
                await self._port.commit(writes)
            except FirestoreRejectedError:
                written += await self._one_by_one(taken)
                continue
            except BaseException:
                self._put_back(taken)
                raise
            self._done(taken)
            written += len(taken)
        return written

    async def _one_by_one(self, taken: dict[str, Pending]) -> int:
        """A batch was refused: find the bad document(s), write the rest."""
        written = 0
        items = list(taken.items())
        for n, (path, p) in enumerate(items):
            try:
                await self._port.commit(p.writes(path))
            except FirestoreRejectedError as exc:
                self.rejected += 1
                log.warning("firestore: dropped a write to %s: %s", loggable(path), exc)
                self._done({path: p})
                continue
            except BaseException:
                self._put_back(dict(items[n:]))
                raise
            self._done({path: p})
            written += 1
        return written

    def _done(self, taken: dict[str, Pending]) -> None:
        now = self._clock()
        for path in taken:
            self._last_write[path] = now
        self.writes += len(taken)
        self.batches += 1
        if len(self._last_write) > 4 * max(len(self._pending), 1000):
            cutoff = now - self._debounce
            self._last_write = {p: t for p, t in self._last_write.items() if t > cutoff}

    def _put_back(self, taken: dict[str, Pending]) -> None:
        for path, old in taken.items():
            newer = self._pending.get(path)
            if newer is not None:
                old.absorb_newer(newer)
            self._pending[path] = old
