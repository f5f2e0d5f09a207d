"""`FirestorePort` over Google's client library: the only module that imports google-cloud.

Writes run on the synchronous client in two worker threads (a hung call cannot
starve the event loop's default executor); listeners are the library's
`on_snapshot` watches, whose callbacks arrive on its own threads. The client
is the plain `google.cloud.firestore.Client`, the same one firebase-admin hands out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from planty_broker.config import FirestoreSettings
from planty_broker.northbound.firestore.port import (
    SERVER_TIME,
    ChangeKind,
    DeleteDoc,
    DocChange,
    FirestoreConfigError,
    FirestoreError,
    FirestoreRejectedError,
    FirestoreUnavailableError,
    OnChanges,
    SetDoc,
    Snapshot,
    Write,
)

try:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc
    from google.cloud import firestore
    from google.cloud.firestore_v1 import base_client
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra message
    raise FirestoreConfigError(
        "firestore: the Google client is not installed; install the extra: "
        "pip install 'planty-broker[firestore]'"
    ) from exc

# gRPC waits longer and longer between its attempts to reconnect a channel (up to 120 s by
# default): after an outage of a minute the broker heard Firestore again only about 30 s
# after it was back (the outage test's command waited so). 5 s at most. The library builds
# its channels from these two option lists (base_client, google-cloud-firestore 2.x) and
# offers no other way in; a test keeps this in step with the library.
RECONNECT_OPTIONS: list[tuple[str, Any]] = [("grpc.max_reconnect_backoff_ms", 5_000)]
for _options in (base_client._DEFAULT_CHANNEL_OPTIONS, base_client._GRPC_MSG_SIZE_OPTIONS):
    for _option in RECONNECT_OPTIONS:
        if _option not in _options:
            _options.append(_option)

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_S = 5.0  # a stop waits this long at most for the client's close

_CONFIG_ERRORS: tuple[type[Exception], ...] = (
    gexc.PermissionDenied,
    gexc.Unauthenticated,
    gexc.NotFound,
    gexc.FailedPrecondition,
    auth_exc.DefaultCredentialsError,
    auth_exc.RefreshError,
)
_REJECTED: tuple[type[Exception], ...] = (gexc.InvalidArgument, gexc.OutOfRange)


def _config_hint(exc: Exception, project: str) -> str:
    if isinstance(exc, (gexc.PermissionDenied, gexc.Unauthenticated, auth_exc.RefreshError)):
        return (
            f"firestore: permission denied on project {project!r}: give the service account "
            "the 'Cloud Datastore User' role, or check firestore.credentials_file"
        )
    if isinstance(exc, (gexc.NotFound, gexc.FailedPrecondition)):
        return (
            f"firestore: project {project!r} has no Firestore database in Native mode "
            "(check firestore.project_id and firestore.database)"
        )
    return f"firestore: no usable credentials ({_first_line(exc)}); set firestore.credentials_file"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def map_errors(project: str) -> Iterator[None]:
    """Turn the library's exceptions into the port's error tree (`raise ... from exc`)."""
    try:
        yield
    except FirestoreError:
        raise
    except _REJECTED as exc:
        raise FirestoreRejectedError(f"firestore refused the data: {_first_line(exc)}") from exc
    except _CONFIG_ERRORS as exc:
        raise FirestoreConfigError(_config_hint(exc, project)) from exc
    except (gexc.GoogleAPIError, auth_exc.TransportError, OSError, TimeoutError) as exc:
        raise FirestoreUnavailableError(f"firestore unreachable: {_first_line(exc)}") from exc


def _to_google(value: Any) -> Any:
    if value is SERVER_TIME:
        return firestore.SERVER_TIMESTAMP
    if isinstance(value, dict):
        return {k: _to_google(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_google(v) for v in value]
    return value


def make_client(settings: FirestoreSettings) -> Any:
    """The Google client for the settings; `FirestoreConfigError` (one line) if it cannot be."""
    from google.auth.credentials import AnonymousCredentials

    project = settings.project_id or None
    database = settings.database
    try:
        if settings.emulator_host:
            client = firestore.Client(
                project=project or "demo-planty",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                database=database,
            )
            # The library reads FIRESTORE_EMULATOR_HOST when it builds a client; the
            # setting reaches it the same way without touching the process environment.
            client._emulator_host = settings.emulator_host
            return client
        if settings.credentials_file:
            from google.oauth2 import service_account

            path = Path(settings.credentials_file).expanduser()
            if not path.is_file():
                raise FirestoreConfigError(
                    f"firestore: credentials_file {path} does not exist; "
                    "download a service-account key or unset it to use application defaults"
                )
            creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                str(path)
            )
            return firestore.Client(
                project=project or creds.project_id, credentials=creds, database=database
            )
        return firestore.Client(project=project, database=database)
    except FirestoreError:
        raise
    except (ValueError, OSError, auth_exc.GoogleAuthError, gexc.GoogleAPIError) as exc:
        raise FirestoreConfigError(_config_hint(exc, settings.project_id or "?")) from exc


class _Watch:
    """A library watch seen through the port's `Listener`."""

    def __init__(self, watch: Any) -> None:
        self._watch = watch

    @property
    def active(self) -> bool:
        return bool(self._watch.is_active)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._watch.close()


def _callback(on_changes: OnChanges) -> Callable[[Any, Any, Any], None]:
    kinds = {
        "ADDED": ChangeKind.ADDED,
        "MODIFIED": ChangeKind.MODIFIED,
        "REMOVED": ChangeKind.REMOVED,
    }

    def callback(docs: Any, changes: Any, _read_time: Any) -> None:
        try:
            out = []
            for ch in changes:
                kind = kinds[ch.type.name]
                data = None if kind is ChangeKind.REMOVED else ch.document.to_dict()
                out.append(DocChange(kind, ch.document.id, data))
            ids = frozenset(d.id for d in (docs if isinstance(docs, list) else [docs]) if d.exists)
            on_changes(Snapshot(out, ids))
        except Exception:  # an exception here would kill the library's thread
            log.exception("firestore listener callback failed")

    return callback


class GoogleFirestore:
    """The real Firestore (or its emulator) behind the port."""

    def __init__(self, client: Any, timeout_s: float) -> None:
        self._client = client
        self._timeout = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="firestore")

    @classmethod
    def from_settings(cls, settings: FirestoreSettings) -> GoogleFirestore:
        return cls(make_client(settings), settings.timeout_s)

    @property
    def project(self) -> str:
        return str(self._client.project)

    @property
    def client(self) -> Any:
        return self._client

    async def _run(self, fn: Callable[[], T]) -> T:
        def call() -> T:
            with map_errors(self.project):
                return fn()

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, call)

    async def commit(self, writes: Sequence[Write]) -> None:
        if not writes:
            return
        client = self._client

        def run() -> None:
            batch = client.batch()
            for w in writes:
                ref = client.document(w.path)
                if isinstance(w, SetDoc):
                    batch.set(ref, _to_google(dict(w.data)), merge=True)
                elif isinstance(w, DeleteDoc):
                    batch.delete(ref)
            batch.commit(retry=None, timeout=self._timeout)

        await self._run(run)

    async def get(self, path: str) -> dict[str, Any] | None:
        def run() -> dict[str, Any] | None:
            snap = self._client.document(path).get(retry=None, timeout=self._timeout)
            return snap.to_dict() if snap.exists else None

        return await self._run(run)

    async def list_ids(self, collection: str) -> list[str]:
        def run() -> list[str]:
            refs = self._client.collection(collection).list_documents(timeout=self._timeout)
            return [r.id for r in refs]

        return await self._run(run)

    def listen_document(self, path: str, on_changes: OnChanges) -> _Watch:
        with map_errors(self.project):
            return _Watch(self._client.document(path).on_snapshot(_callback(on_changes)))

    def listen_collection(self, path: str, on_changes: OnChanges) -> _Watch:
        with map_errors(self.project):
            return _Watch(self._client.collection(path).on_snapshot(_callback(on_changes)))

    async def close(self) -> None:
        """Bounded: the client's close runs on a daemon thread of its own and is waited for
        `CLOSE_S` at most (a close blocked in the library is left behind with a warning),
        never in the loop's default executor, where a stuck one would take a worker for
        good (see listeners.py)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not closed.done():
                closed.set_result(None)

        def run() -> None:
            try:
                self._client.close()
            except Exception as exc:
                log.warning("firestore: closing the client failed: %s", exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(done)

        threading.Thread(target=run, name="firestore-client-close", daemon=True).start()
        await asyncio.wait({closed}, timeout=CLOSE_S)
        if not closed.done():
            log.warning("firestore: the client did not close within %.0f s; left behind", CLOSE_S)
