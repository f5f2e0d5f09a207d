"""deploy/systemd: the unit passes `systemd-analyze verify` (when the tool is there), and keeps
what docs/operations.md promises: its own user, data in /var/lib/planty-broker, restarts."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "deploy" / "systemd" / "planty-broker.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def _unit() -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(UNIT)
    return p


def test_the_unit_says_what_operations_md_promises() -> None:
    s = _unit()["Service"]
    assert s["User"] == "planty-broker" and s["Group"] == "planty-broker"
    assert s["Restart"] == "on-failure"
    assert s["StateDirectory"] == "planty-broker"
    assert s["Environment"] == "PLANTY_DATA_DIR=/var/lib/planty-broker"
    assert "ReadWritePaths" in s and "/var/lib/planty-broker" in s["ReadWritePaths"]
    sysusers = (UNIT.parent / "planty-broker.sysusers").read_text()
    assert "u planty-broker - " in sysusers and "/var/lib/planty-broker" in sysusers


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "root"
    exe = root / "opt" / "planty-broker" / ".venv" / "bin" / "planty"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    (units / "planty-broker.service").write_text(unit_text)
    shutil.copytree(SYSTEM_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    return subprocess.run(
        [
            "systemd-analyze",
            "verify",
            f"--root={root}",
            "/etc/systemd/system/planty-broker.service",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze is not installed here",
)
def test_systemd_analyze_verify_accepts_the_unit_and_refuses_a_broken_one(
    tmp_path: Path,
) -> None:
    good = _verify(UNIT.read_text(), tmp_path / "good")
    assert good.returncode == 0, good.stderr
    assert "planty-broker.service" not in good.stderr, good.stderr  # no warning about it
    bad = _verify(UNIT.read_text().replace("Type=exec", "Type=sometimes"), tmp_path / "bad")
    assert bad.returncode != 0 or "sometimes" in bad.stderr
