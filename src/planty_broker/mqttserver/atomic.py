"""Atomic, private file writes: a reader (Mosquitto on SIGHUP) never sees half a file."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from planty_broker.mqttserver.passwords import new_token


def write_atomic(
    path: Path,
    data: str | bytes,
    *,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write `data` to `path` via temp file + fsync + rename, created with `mode` (default 0600).

    `owner` (uid, gid) chowns the file before it becomes visible (used when root
    hands files to the unprivileged `mosquitto` user).
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed or the caller widened it
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(raw)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_if_changed(
    path: Path,
    data: str,
    *,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
) -> bool:
    """`write_atomic` unless the file already holds exactly `data`; True when written."""
    try:
        if path.read_text() == data:
            _fix_mode(path, mode, owner)
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_atomic(path, data, mode=mode, owner=owner)
    return True


def _fix_mode(path: Path, mode: int, owner: tuple[int, int] | None) -> None:
    st = path.stat()
    if st.st_mode & 0o7777 != mode:
        path.chmod(mode)
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        os.chown(path, *owner)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_secret(path: Path) -> str:
    """A secret generated once and kept in `path` (0600), e.g. the gateway's MQTT password."""
    with contextlib.suppress(FileNotFoundError):
        secret = path.read_text().strip()
        if len(secret) >= 22:  # >= 128 bits of URL-safe base64
            if path.stat().st_mode & 0o077:  # written by an older version or by hand
                path.chmod(0o600)
            return secret
    secret = new_token()
    write_atomic(path, secret + "\n", mode=0o600)
    return secret
