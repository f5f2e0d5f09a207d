"""Each driver failure is classified on purpose, by class: refused for good (set aside) or
unavailable (hold and retry). Real exception classes of both drivers, built by hand."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from sqlalchemy.engine import make_url

from planty_broker.storage.sql_errors import Target, refused

SQLITE = Target(make_url("sqlite:////tmp/x.sqlite3"))
PG = Target(make_url("postgresql+psycopg://u@h/db"))


def sqlite_error(cls: type[sqlite3.Error], code: int) -> sqlite3.Error:
    exc = cls("boom")
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


class OperationalError(Exception):
    """As psycopg raises it for a server error: the class says little, `sqlstate` all."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__("boom")
        self.sqlstate = sqlstate


PgError = OperationalError


@pytest.mark.parametrize(
    ("target", "exc", "permanent"),
    [
        (SQLITE, OverflowError("Python int too large to convert to SQLite INTEGER"), True),
        (SQLITE, UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), True),
        (SQLITE, sqlite_error(sqlite3.IntegrityError, 19), True),  # CONSTRAINT
        (SQLITE, sqlite_error(sqlite3.DataError, 18), True),  # TOOBIG
        (SQLITE, sqlite_error(sqlite3.InterfaceError, 0), True),  # cannot bind a parameter
        (SQLITE, sqlite_error(sqlite3.OperationalError, 20), True),  # MISMATCH
        (SQLITE, sqlite_error(sqlite3.OperationalError, 13), False),  # FULL: disk full
        (SQLITE, sqlite_error(sqlite3.OperationalError, 5), False),  # BUSY
        (SQLITE, sqlite_error(sqlite3.OperationalError, 8), False),  # READONLY
        (SQLITE, sqlite_error(sqlite3.OperationalError, 10), False),  # IOERR
        (SQLITE, sqlite_error(sqlite3.DatabaseError, 11), False),  # CORRUPT: restore, retry
        (PG, PgError("22003"), True),  # numeric value out of range
        (PG, PgError("22P05"), True),  # untranslatable character (NUL in text)
        (PG, PgError("23505"), True),  # unique violation (two creates of one id)
        (PG, PgError("42P01"), True),  # undefined table
        (PG, PgError("54000"), True),  # program limit exceeded (row too big for an index)
        (PG, PgError("08006"), False),  # connection failure
        (PG, PgError("57P01"), False),  # admin shutdown
        (PG, PgError("53100"), False),  # disk full
        (PG, PgError("40001"), False),  # serialization failure: retry
        (PG, PgError("25006"), False),  # read-only transaction (a standby)
        (PG, psycopg.DataError("NUL"), True),  # raised by the driver while adapting
        (PG, psycopg.OperationalError("server closed the connection"), False),
    ],
)
def test_refused_or_unavailable_by_class(
    target: Target, exc: BaseException, permanent: bool
) -> None:
    assert refused(target, exc) is permanent
