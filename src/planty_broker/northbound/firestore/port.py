"""The narrow port the connector needs from Firestore, and its error tree.

Adapters: `google_port.GoogleFirestore` (the real client, also the emulator) and
`memory_port.MemoryFirestore` (a fake for fast unit tests). Nothing here imports
google-cloud, so the core can import this package with Firestore switched off.

Errors (every adapter raises only these):

    FirestoreError
    ├── FirestoreUnavailableError   network down, timeout, server busy: retry later
    ├── FirestoreConfigError        no credentials, wrong project, permission denied: tell
    │                               the operator one line; retrying will not help
    └── FirestoreRejectedError      one write is invalid (e.g. too large): drop it, go on
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from planty_broker.errors import PlantyError


class FirestoreError(PlantyError):
    """Root of the connector's Firestore errors; the message is one line."""


class FirestoreUnavailableError(FirestoreError):
    """Firestore cannot be reached now; the same call may succeed later."""


class FirestoreConfigError(FirestoreError):
    """Misconfigured (credentials, project, rights); the message says what to do."""


class FirestoreRejectedError(FirestoreError):
    """Firestore refused this data itself (invalid or too large); retrying it cannot help."""


class _ServerTime:
    """Marker: the server's commit time (Firestore's SERVER_TIMESTAMP)."""

    _instance: _ServerTime | None = None

    def __new__(cls) -> _ServerTime:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SERVER_TIME"


SERVER_TIME: Any = _ServerTime()


@dataclass(frozen=True, slots=True)
class SetDoc:
    """Create the document or merge `data` into it (nested maps merge field by field)."""

    path: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DeleteDoc:
    path: str


Write = SetDoc | DeleteDoc

MAX_BATCH = 500  # Firestore's limit of writes in one batch


class ChangeKind(StrEnum):
    ADDED = "added"
    MODIFIED = "modified"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class DocChange:
    """One document as a listener saw it change; `data` is None when it was removed."""

    kind: ChangeKind
    doc_id: str
    data: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One delivery of a listener: what changed, and the ids of every document there now."""

    changes: list[DocChange]
    ids: frozenset[str]


OnChanges = Callable[[Snapshot], None]  # may be called from another thread


class Listener(Protocol):
    """A live snapshot listener; `active` turns False when its stream has died."""

    @property
    def active(self) -> bool: ...

    def close(self) -> None: ...


class FirestorePort(Protocol):
    """What the connector does with Firestore; every path is relative to the database root."""

    @property
    def project(self) -> str: ...

    async def commit(self, writes: Sequence[Write]) -> None:
        """Apply up to MAX_BATCH writes atomically (one batch); durable on return."""

    async def get(self, path: str) -> dict[str, Any] | None:
        """The document's fields, or None if it does not exist."""

    async def list_ids(self, collection: str) -> list[str]:
        """Ids of the documents in a collection (for clean-ups, not hot paths)."""

    def listen_document(self, path: str, on_changes: OnChanges) -> Listener:
        """Call `on_changes` with the document now (if it exists) and on every change."""

    def listen_collection(self, path: str, on_changes: OnChanges) -> Listener:
        """Call `on_changes` with every document now (ADDED) and with each later change."""

    async def close(self) -> None: ...
