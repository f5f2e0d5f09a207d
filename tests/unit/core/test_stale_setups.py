"""A set-up left by a killed test run is stopped and removed by the next session's sweep
(tests/stale.py); one whose owner still runs, or that names no owner, is left alone."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stale import OWNER_FILE, own, owner_alive, sweep


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def a_server_in(folder: Path, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A process of the set-up: it runs in the folder, as PostgreSQL or a gateway does."""
    p = subprocess.Popen(["sleep", "600"], cwd=folder)
    procs.append(p)
    return p


def owned_by_a_gone_process(folder: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names no process now (or another one, started later)
    (folder / OWNER_FILE).write_text(json.dumps({"pid": gone.pid, "start": 0}))


def test_a_set_up_whose_test_run_is_gone_is_stopped_and_removed(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    stale = tmp_path / "planty-cl-stale"
    stale.mkdir()
    owned_by_a_gone_process(stale)
    orphan = a_server_in(stale, sleepers)

    live = tmp_path / "planty-cl-live"  # another worktree's run, still going
    live.mkdir()
    own(live)
    running = a_server_in(live, sleepers)

    unmarked = tmp_path / "planty-rmq-unmarked"  # being created, or made by hand
    unmarked.mkdir()
    untouched = a_server_in(unmarked, sleepers)

    assert owner_alive(stale) is False and owner_alive(live) is True
    assert owner_alive(unmarked) is None
    lines = sweep([tmp_path])

    assert len(lines) == 1 and str(stale) in lines[0] and "1 process(es) ended" in lines[0]
    assert orphan.wait(timeout=30) is not None  # ended by the sweep
    assert not stale.exists()
    assert running.poll() is None and live.exists()
    assert untouched.poll() is None and unmarked.exists()
    assert sweep([tmp_path]) == []
