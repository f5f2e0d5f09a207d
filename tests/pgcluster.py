"""A private PostgreSQL cluster for tests when no server is reachable (fresh machines, CI).

Uses the Debian server binaries (/usr/lib/postgresql/<v>/bin): initdb with trust auth into a
temporary folder, started on a free loopback port, removed at the end. As root it runs them
as the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port
from tests.stale import own


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PrivateCluster:
    """initdb + pg_ctl start on a free port; `url` is a SQLAlchemy URL of its `postgres` db."""

    def __init__(self) -> None:
        initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")
        self._pg_ctl = pg_ctl
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="planty-pg-"))
        own(self.dir)  # a run killed mid-way: the next one stops this server (tests/stale.py)
        self._user: list[str] = []
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # KeyError if the user does not exist
            shutil.chown(self.dir, "postgres")
            self._user = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        self._run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        self._run([pg_ctl, "-D", str(data), "-l", str(self.dir / "log"), "-w", "-t", "30", "-o",
                   f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off",
                   "start"])
        self.data = data
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str]) -> None:
        subprocess.run([*self._user, *cmd], check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        try:
            self._run([self._pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"])
        except (subprocess.SubprocessError, OSError):
            pass
        time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
