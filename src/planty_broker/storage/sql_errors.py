"""Turn SQLite / PostgreSQL driver errors into our store errors, with a next step.

Each failure is classified on purpose, by error class (`refused`): data the database
refuses for good (an integer past 64 bits, a NUL in PostgreSQL text, a broken
constraint) is permanent, `StoreRejectedError`: retrying the same write cannot succeed,
so writers set it aside (dead letters). Everything else the database says (disk full,
locked, read-only, connection lost, server down) is transient, `StoreUnavailableError`:
writers hold the data and retry. Each message is one line: what happened, where, and what
to do. The URL's password never appears (it is scrubbed from driver messages too).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

from planty_broker.ports.store import StoreUnavailableError

# Refused for good, by class. Raised by the drivers themselves (not wrapped by SQLAlchemy)
# while binding: sqlite3 for an int past 64 bits (OverflowError), both for a lone surrogate.
REFUSED_PYTHON = (OverflowError, UnicodeError)
# SQLite primary codes that say the data is at fault: too big, constraint, type, range.
_SQLITE_REFUSED = frozenset({18, 19, 20, 25})
# PostgreSQL SQLSTATE classes that say the data or statement is at fault: 22 data exception
# (out of range, NUL in text, bad encoding), 23 integrity, 42 syntax or access rule,
# 54 program limit exceeded (a row too large for an index), 0A feature not supported.
_PG_REFUSED = ("22", "23", "42", "54", "0A")
# Driver exception class names that mean "this data / this statement", on both drivers.
_REFUSED_NAMES = frozenset({"DataError", "IntegrityError", "ProgrammingError", "NotSupportedError"})

# SQLite primary result codes (https://sqlite.org/rescode.html).
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_NOMEM = 7
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


@dataclass(frozen=True, slots=True)
class Target:
    """Where the store lives, as safe to print: no password."""

    url: URL

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def sqlite_path(self) -> Path:
        """The database file (`file:` URIs, `?uri=true`, are reduced to their path)."""
        database = self.url.database or ""
        if self.url.query.get("uri") and database.startswith("file:"):
            database = database.removeprefix("file:").split("?", 1)[0]
        return Path(database)

    @property
    def host_port(self) -> str:
        return f"{self.url.host or 'localhost'}:{self.url.port or 5432}"

    def safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def scrub(self, text: str) -> str:
        """Remove the password (if any) from a driver message; keep the first line only."""
        line = text.strip().splitlines()[0] if text.strip() else "unknown error"
        password = self.url.password
        if password:
            line = line.replace(str(password), "***")
        return line


def sqlite_error(target: Target, orig: BaseException) -> StoreUnavailableError:
    """Message for a sqlite3 error, chosen by its result code."""
    path = target.sqlite_path
    folder = path.parent
    code = getattr(orig, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    reason = target.scrub(str(orig))
    if primary == _SQLITE_FULL:
        msg = f"database disk is full: free space in {folder} (SQLite store {path})"
    elif primary == _SQLITE_READONLY:
        msg = (
            f"cannot write the SQLite store {path}: it is read-only; "
            f"make {path} and {folder} writable by this user"
        )
    elif primary in (_SQLITE_CANTOPEN, _SQLITE_PERM):
        msg = (
            f"cannot open the SQLite store {path}: check that {folder} exists "
            "and is writable, or set store.url"
        )
    elif primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        msg = (
            f"the SQLite store {path} is locked by another process: stop the other "
            "planty instance using it (several instances need PostgreSQL)"
        )
    elif primary == _SQLITE_IOERR:
        msg = (
            f"disk I/O error on the SQLite store {path} ({reason}): "
            f"check the disk and free space in {folder}"
        )
    elif primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        msg = (
            f"{path} is not a valid SQLite database ({reason}): restore it from a "
            "backup or point store.url at another file"
        )
    elif primary == _SQLITE_NOMEM:
        msg = f"SQLite ran out of memory on {path}: free memory and restart"
    else:
        msg = f"SQLite store {path} failed: {reason}"
    return StoreUnavailableError(msg)


def postgres_error(target: Target, orig: BaseException, *, lost: bool) -> StoreUnavailableError:
    """Message for a psycopg error, chosen by SQLSTATE (or text, for connection failures)."""
    where = f"PostgreSQL at {target.host_port}"
    sqlstate = str(getattr(orig, "sqlstate", None) or "")
    reason = target.scrub(str(orig))
    text = reason.lower()
    database = target.url.database or ""
    user = target.url.username or ""
    refused = ("password authentication failed", f'role "{user}" does not exist')
    if sqlstate in ("28P01", "28000") or any(r in text for r in refused):
        msg = f"{where} refused user {user!r}: check the user and password in store.url"
    elif sqlstate == "3D000" or (database and f'database "{database}" does not exist' in text):
        msg = (
            f"database {database!r} does not exist on {where}: create it "
            f"(createdb {database}) or fix store.url"
        )
    elif sqlstate == "53100":
        msg = f"{where} is out of disk space: free space on the database server"
    elif sqlstate == "25006":
        msg = f"{where} is read-only (a standby?): point store.url at the primary server"
    elif lost or sqlstate.startswith(("08", "57P")):
        msg = f"lost the connection to {where}: {reason}; it reconnects on the next operation"
    elif not sqlstate:
        msg = (
            f"cannot connect to {where}: {reason}; check that the server is running "
            "and that store.url is right"
        )
    else:
        msg = f"{where} failed ({sqlstate}): {reason}"
    return StoreUnavailableError(msg)


def refused(target: Target, orig: BaseException) -> bool:
    """True if the database refused this data or statement for good (see the module doc)."""
    if isinstance(orig, REFUSED_PYTHON):
        return True
    name = type(orig).__name__
    if target.is_sqlite:
        if name in _REFUSED_NAMES or name == "InterfaceError":  # InterfaceError: cannot bind
            return True
        code = getattr(orig, "sqlite_errorcode", None)
        return isinstance(code, int) and code & 0xFF in _SQLITE_REFUSED
    sqlstate = str(getattr(orig, "sqlstate", None) or "")
    if sqlstate:
        return sqlstate.startswith(_PG_REFUSED)
    return name in _REFUSED_NAMES


def driver_error(
    target: Target, orig: BaseException, *, lost: bool = False
) -> StoreUnavailableError:
    """The store error for any driver exception of the target's database."""
    if target.is_sqlite and isinstance(orig, sqlite3.Error):
        return sqlite_error(target, orig)
    if not target.is_sqlite:
        return postgres_error(target, orig, lost=lost)
    return StoreUnavailableError(
        f"SQLite store {target.sqlite_path} failed: {target.scrub(str(orig))}"
    )


def os_error(target: Target, exc: OSError) -> StoreUnavailableError:
    """Preparing the SQLite folder failed (permissions, a file in the way, full disk)."""
    folder = target.sqlite_path.parent
    return StoreUnavailableError(
        f"cannot create the folder {folder} for the SQLite store: {exc.strerror or exc}; "
        "create it or set store.url"
    )
