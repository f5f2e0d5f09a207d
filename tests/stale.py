"""Set-ups a test run leaves behind when it is killed mid-run, found and stopped by the next.

A test that starts real servers in a folder of its own (a cluster set-up with RabbitMQ nodes,
a private PostgreSQL and gateways in /tmp/planty-cl-*, a private RabbitMQ node, a private
PostgreSQL, a supervised Mosquitto) names its owner in that folder first (`own`): the pytest
process, by pid and start time (a pid alone may be reused). A run killed with kill -9 or a
timeout never reaches its clean-up, and its servers run on. At the start of the next session
`sweep` stops the processes of every such folder whose owner is gone and removes the folder,
saying so in one line each. A folder whose owner still runs (another worktree's suite, or a
pytest-xdist worker of this one) is left alone, and so is one without an owner file (being
created right now, or made by hand, e.g. `bin/cluster start`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

OWNER_FILE = ".planty-test-owner"
PREFIXES = ("planty-cl-", "planty-cluster-", "planty-rmq-", "planty-pg-", "planty-mq-")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    return int(stat.rsplit(")", 1)[1].split()[19])


def own(folder: Path) -> None:
    """Mark `folder` as this process's set-up (call right after creating it)."""
    me = os.getpid()
    (folder / OWNER_FILE).write_text(json.dumps({"pid": me, "start": _start_time(me)}))


def owner_alive(folder: Path) -> bool | None:
    """True/False: its owner runs / is gone; None: no readable owner file (leave it alone)."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
        pid, start = int(owner["pid"]), owner["start"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _start_time(pid) == start


def _roots() -> list[Path]:
    return sorted({Path("/tmp"), Path(tempfile.gettempdir())})


def candidates(roots: Iterable[Path] | None = None) -> Iterator[Path]:
    for root in _roots() if roots is None else roots:
        with contextlib.suppress(OSError):
            for folder in root.iterdir():
                if folder.name.startswith(PREFIXES) and folder.is_dir():
                    yield folder


def _uses(pid: int, folder: str) -> bool:
    """The process runs in `folder`, or names it on its command line or in its environment
    (RabbitMQ's Erlang VM: RABBITMQ_MNESIA_BASE; PostgreSQL: its cwd is the data folder)."""
    proc = Path(f"/proc/{pid}")
    with contextlib.suppress(OSError):
        cwd = os.readlink(proc / "cwd")
        if cwd == folder or cwd.startswith(folder + "/"):
            return True
    for name in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if folder.encode() in (proc / name).read_bytes():
                return True
    return False


def processes_in(folder: Path) -> list[int]:
    me = os.getpid()
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if pid != me and _uses(pid, str(folder))]


def _stop_postgres(folder: Path) -> None:
    """pg_ctl stop on each data folder in it: the server's children go with the postmaster."""
    found = shutil.which("pg_ctl") or sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        return
    pg_ctl = found if isinstance(found, str) else found[-1]
    user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    for pid_file in folder.rglob("postmaster.pid"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [*user, pg_ctl, "-D", str(pid_file.parent), "-m", "immediate", "stop"],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip


def stop(folder: Path) -> None:
    """Stop every process of the set-up in `folder` (TERM, then KILL), and remove it."""
    _stop_postgres(folder)
    pids = processes_in(folder)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
            time.sleep(0.1)
    shutil.rmtree(folder, ignore_errors=True)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def sweep(roots: Iterable[Path] | None = None) -> list[str]:
    """Stop and remove the set-ups whose owning test process is gone; one line for each."""
    lines = []
    for folder in candidates(roots):
        if owner_alive(folder) is not False:
            continue
        ended = len(processes_in(folder))
        stop(folder)
        lines.append(
            f"tests: stopped a set-up left by a test run that is gone: {folder} "
            f"({ended} process(es) ended, folder removed)"
        )
    return lines
