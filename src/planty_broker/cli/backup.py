"""`planty backup FILE` (while the gateway runs) and `planty restore FILE` (into a stopped
data folder); the work is in `storage.backup`, docs/operations.md says when to use them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from planty_broker.cli.client import ConfigOpt, DataDirOpt, console, fail, settings_from
from planty_broker.config import Settings
from planty_broker.text import plural

# storage.backup and SQLAlchemy are imported by the two commands, not here: every `planty`
# command loads this module, and SQLAlchemy alone was most of the CLI's start (1.2 of 1.4 s).

FileArg = Annotated[Path, typer.Argument(help="the archive (.tar.gz)")]


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite file of the store; None for PostgreSQL."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.store_url())
    if url.get_backend_name() != "sqlite":
        return None
    return Path(url.database or "").expanduser().resolve()


def backup(file: FileArg, config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Write a consistent snapshot of the data folder to FILE, while the gateway runs."""
    from planty_broker.storage.backup import BackupError
    from planty_broker.storage.backup import backup as take_backup

    settings = settings_from(config, data_dir)
    db = sqlite_path(settings)
    try:
        r = take_backup(settings.data_dir, file, sqlite_path=db, now_ms=time.time_ns() // 10**6)
    except BackupError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror or exc}")
    store = f"store {r.store_bytes / 1e6:.1f} MB, " if r.store == "sqlite" else ""
    console.print(
        f"backup written to {r.path}: {store}{plural(r.files, 'other file')}, "
        f"{r.archive_bytes / 1e6:.1f} MB compressed, {r.seconds:.1f} s",
        highlight=False,
    )
    if r.store == "postgresql":
        console.print(
            "the store is PostgreSQL: this archive holds the data folder only; back the "
            "database up with pg_dump (docs/operations.md)",
            highlight=False,
        )


def restore(
    file: FileArg,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="move what the data folder holds aside first")
    ] = False,
) -> None:
    """Restore FILE into the (stopped) gateway's data folder."""
    from planty_broker.storage.backup import BackupError
    from planty_broker.storage.backup import restore as do_restore

    settings = settings_from(config, data_dir)
    try:
        done = do_restore(file, settings.data_dir, force=force, now_ms=time.time_ns() // 10**6)
    except BackupError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot restore {file}: {exc.strerror or exc}")
    m = done["manifest"]
    console.print(
        f"restored {plural(len(m['files']), 'file')}"
        f"{' and the store' if m['store'] == 'sqlite' else ''} into {settings.data_dir} "
        f"(backup of version {m['version']})",
        highlight=False,
    )
    if done["moved_to"] is not None:
        console.print(f"what was there before is in {done['moved_to']}", highlight=False)
    if m["store"] == "postgresql":
        console.print("restore the PostgreSQL database with pg_restore/psql first", highlight=False)
    console.print("start the gateway: it migrates the store if this version is newer")
