"""bench/soak.py works (issue 12): a short run, a small fleet, one kill -9; not timed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def test_a_short_soak_runs_and_reports(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak.py"),
            "--devices",
            "20",
            "--minutes",
            "2",
            "--kill-every",
            "1",
            "--interval",
            "2",
            "--warmup",
            "0.25",
            "--sample-s",
            "5",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "fleet online: 20/20" in out
    assert re.search(r"minute +1: gateway pid \d+ RSS +[\d.]+ MiB", out)
    assert "kill -9 #1" in out
    assert "pooled slope" in out and "MiB per device-day" in out
    found = re.search(
        r"readings: ([\d,]+) acknowledged to devices, ([\d,]+) stored; lost ([\d,]+), "
        r"doubled ([\d,]+) \(same device, boot, seq\) / ([\d,]+) \(same device, seq, time\)",
        out,
    )
    assert found, out[-3000:]
    acked, stored, _lost, doubled, doubled_by_time = (
        int(g.replace(",", "")) for g in found.groups()
    )
    assert acked > 0 and stored > 0
    assert doubled == 0 and doubled_by_time == 0
