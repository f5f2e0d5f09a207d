"""Pairing through Firestore documents, driving the same pairing service as the HTTP API.

While the broker is not paired it publishes its live code as
`pairing_codes/{code}` (`broker_id`, `expires_at`, `claimed_by: null`). The
user's app, knowing the code a person read off `planty run`, sets
`claimed_by` to its account id (firestore.rules allow exactly that). The
broker hears it, calls `PairingService.claim(code, account)`; on success it
writes `owner` and `paired_at` into `brokers/{id}` and deletes the code
document; on refusal it writes `error` and clears `claimed_by`. A code that
expires is replaced by the next one; pairing or unpairing through the API is
mirrored too (owner set or cleared, code document published or deleted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from planty_broker.northbound.firestore import model
from planty_broker.northbound.firestore.bridges import PairingLike
from planty_broker.northbound.firestore.buffer import DocBuffer
from planty_broker.northbound.firestore.listeners import SupervisedListener
from planty_broker.northbound.firestore.port import SERVER_TIME, FirestorePort, Snapshot
from planty_broker.services.access.pairing import PairingError

log = logging.getLogger(__name__)

CLIENT_PREFIX = "firestore:"  # rate limits count per claiming account


class PairingDocs:
    """Keeps the pairing documents in step with the pairing service."""

    def __init__(
        self,
        pairing: PairingLike,
        port: FirestorePort,
        paths: model.Paths,
        buffer: DocBuffer,
        wake: Callable[[], None],
    ) -> None:
        self._pairing = pairing
        self._port = port
        self._paths = paths
        self._buffer = buffer
        self._wake = wake
        self._published: str | None = None  # the code whose document is out there
        self._listener: SupervisedListener | None = None
        self._owner: tuple[str | None, int | None] | None = None  # last written
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self.claims = 0
        self.refusals = 0

    def owner_fields(self) -> dict[str, Any]:
        """`owner` / `paired_at` for the broker document, from the pairing service."""
        p = self._pairing.pairing
        if p is None:
            return {"owner": None, "paired_at": None}
        return {"owner": p.account_id, "paired_at": model.at(p.paired_ms)}

    async def sync(self) -> None:
        """Publish / withdraw the code document and mirror the owner; cheap, call often."""
        async with self._lock:
            await self._sync()

    async def _sync(self) -> None:
        code = await self._pairing.current_code()
        p = self._pairing.pairing
        owner = (p.account_id, p.paired_ms) if p is not None else (None, None)
        if owner != self._owner:
            self._owner = owner
            self._buffer.set(self._paths.broker, self.owner_fields())
            self._wake()
        live = code.code if code is not None else None
        if live == self._published:
            return
        await self._withdraw()
        if code is not None:
            self._buffer.set(
                model.pairing_path(code.code),
                {
                    "broker_id": self._paths.broker_id,
                    "expires_at": model.at(code.expires_ms),
                    "created_at": SERVER_TIME,
                    "claimed_by": None,
                    "error": None,
                },
            )
            self._published = code.code
            self._listener = SupervisedListener(
                self._port,
                model.pairing_path(code.code),
                self._on_code_doc,
                collection=False,
                name="pairing",
            )
            await self._listener.start()
            self._wake()

    async def _withdraw(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._published is not None:
            self._buffer.delete(model.pairing_path(self._published))
            self._published = None
            self._wake()

    @property
    def listener(self) -> SupervisedListener | None:
        """The code document's listener, while a code is published."""
        return self._listener

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None

    async def _on_code_doc(self, snap: Snapshot) -> None:
        for ch in snap.changes:
            if ch.data is None or ch.doc_id != self._published:
                continue
            account = ch.data.get("claimed_by")
            if isinstance(account, str) and account:
                await self._claim(ch.doc_id, account)

    async def _claim(self, code: str, account: str) -> None:
        path = model.pairing_path(code)
        try:
            await self._pairing.claim(code, account, client=f"{CLIENT_PREFIX}{account}")
        except PairingError as exc:
            self.refusals += 1
            log.warning("firestore: pairing claim refused: %s", exc)
            self._buffer.set(path, {"claimed_by": None, "error": str(exc), "at": SERVER_TIME})
            self._wake()
            return
        self.claims += 1
        log.info("firestore: broker paired through Firestore with account %s", account)
        # Owner written, code document withdrawn: from another task, since withdrawing
        # stops the very listener whose handler this is.
        task = asyncio.get_running_loop().create_task(self.sync(), name="firestore-pairing-sync")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
