"""`MemoryFirestore`: the port in memory, for fast unit tests (the httpx MockTransport idea).

Same merge semantics as `set(..., merge=True)` (nested maps merge field by
field), atomic batches, listeners that get the current documents first and
every later change. `offline = True` makes every call raise
`FirestoreUnavailableError` and kills the live listeners, as a network loss does;
listeners opened while offline start delivering once it is back online.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from planty_broker.northbound.firestore.port import (
    MAX_BATCH,
    SERVER_TIME,
    ChangeKind,
    DeleteDoc,
    DocChange,
    FirestoreRejectedError,
    FirestoreUnavailableError,
    OnChanges,
    SetDoc,
    Snapshot,
    Write,
)


def _resolve(value: Any) -> Any:
    if value is SERVER_TIME:
        return dt.datetime.now(dt.UTC)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve(v) for v in value]
    return value


def deep_merge(into: dict[str, Any], data: dict[str, Any]) -> None:
    """Firestore's merge: maps merge key by key, anything else replaces."""
    for key, value in data.items():
        old = into.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            deep_merge(old, value)
        else:
            into[key] = copy.deepcopy(value)


@dataclass(slots=True)
class _MemListener:
    path: str
    is_collection: bool
    on_changes: OnChanges
    alive: bool = True
    started: bool = False
    closed: bool = False

    @property
    def active(self) -> bool:
        return self.alive and not self.closed

    def close(self) -> None:
        self.closed = True


@dataclass(slots=True)
class MemoryFirestore:
    """A fake Firestore; `docs` maps a document path to its fields."""

    project: str = "demo-memory"
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    commits: list[list[Write]] = field(default_factory=list)
    reject_paths: set[str] = field(default_factory=set)
    listeners: list[_MemListener] = field(default_factory=list)
    _offline: bool = False

    # ------------------------------------------------------------ network

    @property
    def offline(self) -> bool:
        return self._offline

    @offline.setter
    def offline(self, value: bool) -> None:
        self._offline = value
        if value:
            for lst in self.listeners:
                lst.alive = False
        else:
            for lst in self.listeners:
                if lst.active and not lst.started:
                    self._start(lst)

    def _check(self) -> None:
        if self._offline:
            raise FirestoreUnavailableError("firestore unreachable: memory fake is offline")

    # ------------------------------------------------------------ the port

    async def commit(self, writes: Sequence[Write]) -> None:
        self._check()
        if len(writes) > MAX_BATCH:
            raise FirestoreRejectedError(f"a batch holds at most {MAX_BATCH} writes")
        for w in writes:
            if w.path in self.reject_paths:
                raise FirestoreRejectedError(f"firestore refused the data: {w.path}")
        before = {w.path: copy.deepcopy(self.docs.get(w.path)) for w in writes}
        for w in writes:
            if isinstance(w, SetDoc):
                deep_merge(self.docs.setdefault(w.path, {}), _resolve(dict(w.data)))
            elif isinstance(w, DeleteDoc):
                self.docs.pop(w.path, None)
        self.commits.append(list(writes))
        for path, old in before.items():
            self._notify(path, old)

    async def get(self, path: str) -> dict[str, Any] | None:
        self._check()
        doc = self.docs.get(path)
        return None if doc is None else copy.deepcopy(doc)

    async def list_ids(self, collection: str) -> list[str]:
        self._check()
        return sorted(p.rsplit("/", 1)[1] for p in self.docs if p.rsplit("/", 1)[0] == collection)

    def listen_document(self, path: str, on_changes: OnChanges) -> _MemListener:
        return self._listen(path, False, on_changes)

    def listen_collection(self, path: str, on_changes: OnChanges) -> _MemListener:
        return self._listen(path, True, on_changes)

    async def close(self) -> None:
        for lst in self.listeners:
            lst.close()

    # ------------------------------------------------------------ server side (tests)

    def server_set(self, path: str, data: dict[str, Any], *, merge: bool = True) -> None:
        """What the Planty server does: write a document, listeners see it."""
        old = copy.deepcopy(self.docs.get(path))
        if merge and path in self.docs:
            deep_merge(self.docs[path], data)
        else:
            self.docs[path] = copy.deepcopy(data)
        self._notify(path, old)

    def server_delete(self, path: str) -> None:
        old = self.docs.pop(path, None)
        self._notify(path, old)

    def writes_to(self, path: str) -> int:
        """How many committed writes touched `path`."""
        return sum(1 for batch in self.commits for w in batch if w.path == path)

    # ------------------------------------------------------------ internals

    def _listen(self, path: str, is_collection: bool, on_changes: OnChanges) -> _MemListener:
        lst = _MemListener(path, is_collection, on_changes)
        self.listeners.append(lst)
        if not self._offline:
            self._start(lst)
        return lst

    def _ids(self, lst: _MemListener) -> frozenset[str]:
        if lst.is_collection:
            return frozenset(
                p.rsplit("/", 1)[1] for p in self.docs if p.rsplit("/", 1)[0] == lst.path
            )
        return frozenset([lst.path.rsplit("/", 1)[1]]) if lst.path in self.docs else frozenset()

    def _start(self, lst: _MemListener) -> None:
        lst.started = True
        if lst.is_collection:
            changes = [
                DocChange(ChangeKind.ADDED, p.rsplit("/", 1)[1], copy.deepcopy(d))
                for p, d in sorted(self.docs.items())
                if p.rsplit("/", 1)[0] == lst.path
            ]
        else:
            doc = self.docs.get(lst.path)
            changes = (
                []
                if doc is None
                else [DocChange(ChangeKind.ADDED, lst.path.rsplit("/", 1)[1], copy.deepcopy(doc))]
            )
        lst.on_changes(Snapshot(changes, self._ids(lst)))

    def _notify(self, path: str, old: dict[str, Any] | None) -> None:
        new = self.docs.get(path)
        if old == new:
            return
        parent, doc_id = path.rsplit("/", 1)
        if new is None:
            change = DocChange(ChangeKind.REMOVED, doc_id, None)
        elif old is None:
            change = DocChange(ChangeKind.ADDED, doc_id, copy.deepcopy(new))
        else:
            change = DocChange(ChangeKind.MODIFIED, doc_id, copy.deepcopy(new))
        for lst in list(self.listeners):
            if not lst.active or not lst.started:
                continue
            if (lst.is_collection and lst.path == parent) or (
                not lst.is_collection and lst.path == path
            ):
                lst.on_changes(Snapshot([change], self._ids(lst)))
