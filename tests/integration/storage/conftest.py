"""Stores under test: MemoryStore, SqlStore on a SQLite file, SqlStore on a real PostgreSQL.

PostgreSQL: a uniquely named database is created on the local server for the test
session (each pytest-xdist worker is a session of its own) and dropped at the end
(override the server with PLANTY_TEST_POSTGRES_URL). Where no server answers, a private
cluster is started for the session (tests/pgcluster.py), one per worker.
Each test starts from empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url

from planty_broker.ports.store import Store
from planty_broker.storage.memory import MemoryStore
from planty_broker.storage.schema import metadata
from planty_broker.storage.sql import SqlStore
from tests.conftest import worker_id

ADMIN_URL = os.environ.get(
    "PLANTY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
_cluster = None  # a PrivateCluster when no server was reachable

StoreFactory = Callable[[], Store]


def _admin_connect():  # type: ignore[no-untyped-def]
    import psycopg

    url = make_url(ADMIN_URL).set(drivername="postgresql")
    return psycopg.connect(
        url.render_as_string(hide_password=False), autocommit=True, connect_timeout=3
    )


class PgServer:
    """Creates and drops uniquely named databases on the test PostgreSQL server."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self, prefix: str = "planty_test") -> str:
        # the xdist worker in the name: a database left by a killed run says whose it was
        name = f"{prefix}_{worker_id()}_{uuid.uuid4().hex[:12]}"
        with _admin_connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with _admin_connect() as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    global ADMIN_URL, _cluster  # noqa: PLW0603 - one server for the whole session
    try:
        _admin_connect().close()
    except Exception as exc:  # ImportError (no psycopg) or OperationalError (no server)
        where = make_url(ADMIN_URL).render_as_string(hide_password=True)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "PLANTY_TEST_POSTGRES_URL" in os.environ:
            pytest.fail(f"PostgreSQL not reachable at {where}: {first_line}")
        from tests.pgcluster import PrivateCluster

        try:
            _cluster = PrivateCluster()
        except Exception as start_exc:
            pytest.skip(
                f"PostgreSQL not reachable at {where} ({first_line}) and no private "
                f"cluster could start: {start_exc}"
            )
        ADMIN_URL = _cluster.url
    server = PgServer()
    yield server
    server.drop_all()
    if _cluster is not None:
        _cluster.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """One database for the contract tests of the session (tables emptied per test)."""
    return pg_server.create()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("sqlite", marks=pytest.mark.integration),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes unopened stores that all see the same data (same file / database)."""
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'planty.sqlite3'}"
        return lambda: SqlStore(url)
    pg = request.getfixturevalue("pg_url")
    return lambda: SqlStore(pg)


async def _empty_tables(store: SqlStore) -> None:
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    await store.run(lambda c: c.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE")))


async def empty_if_shared(store: Store) -> None:
    """Empty an opened store on the PostgreSQL database the tests of a worker share."""
    if isinstance(store, SqlStore) and store.dialect == "postgresql":
        await _empty_tables(store)


@pytest_asyncio.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[Store]:
    """An opened, empty store; closed after the test."""
    s = store_factory()
    await s.open()
    await empty_if_shared(s)
    try:
        yield s
    finally:
        await s.close()
