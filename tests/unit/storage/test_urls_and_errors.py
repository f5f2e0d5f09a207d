"""Store URLs and error messages: what a user sees when store.url or the database is wrong."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from planty_broker.errors import StoreError
from planty_broker.ports.store import StoreUnavailableError
from planty_broker.storage import migrate
from planty_broker.storage.sql import SqlStore, open_store
from planty_broker.storage.sql_engine import normalize_url
from planty_broker.storage.sql_errors import Target, driver_error


@pytest.mark.parametrize(
    "url",
    ["postgres://u:p@db:5432/planty", "postgresql://u:p@db/planty", "postgresql+psycopg://u@db/x"],
)
def test_postgres_urls_use_psycopg_3(url: str) -> None:
    assert normalize_url(url).drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    "url", ["mysql://u@h/db", "postgresql+psycopg2://u@h/db", "sqlite+aiosqlite:///x"]
)
def test_unsupported_urls_say_what_is_supported(url: str) -> None:
    with pytest.raises(StoreError, match=r"is not supported: use sqlite:///.* or postgresql://"):
        SqlStore(url)


def test_garbage_url_is_refused_clearly() -> None:
    with pytest.raises(StoreError, match=r"store\.url is not a valid URL"):
        SqlStore("::nonsense::/x")


def test_password_is_hidden_in_repr_and_safe_url() -> None:
    s = SqlStore("postgresql://planty:hunter2@db.example:6543/planty")
    assert "hunter2" not in repr(s)
    assert s.safe_url == "postgresql+psycopg://planty:***@db.example:6543/planty"
    assert s.dialect == "postgresql"


def test_open_store_accepts_a_plain_path(tmp_path: Path) -> None:
    s = open_store(str(tmp_path / "x.sqlite3"))
    assert s.dialect == "sqlite"
    assert s.safe_url == f"sqlite:///{tmp_path / 'x.sqlite3'}"


def test_bad_synchronous_setting_is_refused() -> None:
    with pytest.raises(StoreError, match="FULL"):
        SqlStore("sqlite:///x.db", sqlite_synchronous="OFF")


class FakePgError(Exception):
    """Stands in for a psycopg error: a message and a SQLSTATE."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


PG = Target(make_url("postgresql+psycopg://planty:pw-123@db.example:6543/planty"))


@pytest.mark.parametrize(
    ("message", "sqlstate", "expected"),
    [
        (
            "could not extend file: No space left on device",
            "53100",
            "PostgreSQL at db.example:6543 is out of disk space: free space on the database server",
        ),
        (
            "cannot execute INSERT in a read-only transaction",
            "25006",
            "PostgreSQL at db.example:6543 is read-only (a standby?): "
            "point store.url at the primary server",
        ),
        (
            'FATAL:  password authentication failed for user "planty"',
            None,
            "PostgreSQL at db.example:6543 refused user 'planty': "
            "check the user and password in store.url",
        ),
        (
            "terminating connection due to administrator command",
            "57P01",
            "lost the connection to PostgreSQL at db.example:6543: terminating connection due "
            "to administrator command; it reconnects on the next operation",
        ),
        (
            "connection failed: timeout expired\nsecond line with pw-123",
            None,
            "cannot connect to PostgreSQL at db.example:6543: connection failed: timeout expired; "
            "check that the server is running and that store.url is right",
        ),
    ],
)
def test_postgres_errors_become_one_clear_line(
    message: str, sqlstate: str | None, expected: str
) -> None:
    err = driver_error(PG, FakePgError(message, sqlstate))
    assert isinstance(err, StoreUnavailableError)
    assert str(err) == expected


def test_the_password_is_scrubbed_from_driver_messages() -> None:
    err = driver_error(PG, FakePgError("odd failure mentioning pw-123", "XX000"))
    assert str(err) == "PostgreSQL at db.example:6543 failed (XX000): odd failure mentioning ***"


SQLITE = Target(make_url("sqlite:////srv/planty/data/planty.sqlite3"))


def sqlite_error(code: int, message: str) -> sqlite3.Error:
    err = sqlite3.OperationalError(message)
    err.sqlite_errorcode = code  # type: ignore[attr-defined]
    return err


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            5,
            "the SQLite store /srv/planty/data/planty.sqlite3 is locked by another process: "
            "stop the other planty instance using it (several instances need PostgreSQL)",
        ),
        (
            14,
            "cannot open the SQLite store /srv/planty/data/planty.sqlite3: check that "
            "/srv/planty/data exists and is writable, or set store.url",
        ),
        (
            10 | (4 << 8),
            "disk I/O error on the SQLite store /srv/planty/data/planty.sqlite3 "
            "(boom): check the disk and free space in /srv/planty/data",
        ),
    ],
)
def test_sqlite_errors_name_the_file_and_the_fix(code: int, expected: str) -> None:
    assert str(driver_error(SQLITE, sqlite_error(code, "boom"))) == expected


def test_migrations_form_one_chain_starting_at_0001_core() -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(scripts.get_heads()) == 1, "two migrations claim the same down_revision"
    chain = list(reversed(list(scripts.walk_revisions())))
    assert chain[0].revision == "0001_core"
    assert chain[0].down_revision is None
    for prev, cur in itertools.pairwise(chain):
        assert cur.down_revision == prev.revision
    assert migrate.head_revision() == chain[-1].revision
