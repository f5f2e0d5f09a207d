"""What every benchmark here needs: a free port, percentiles, the machine it ran on, and
scripts/cluster.py (bin/cluster) as a module.

The scripts run as `python bench/<name>.py`, so this folder is on sys.path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values` by rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine_line() -> str:
    """One line: cores, CPU model, Python, date and load average."""
    cpu = "?"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?"
        )
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} cpu ({cpu}), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {load}"
    )


def cluster_script() -> ModuleType:
    """scripts/cluster.py loaded as a module (its PostgreSQL and RabbitMQ set-up helpers)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "cluster.py"
    spec = importlib.util.spec_from_file_location("cluster_script", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cluster_script"] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def private_postgres(prefix: str) -> Iterator[str]:
    """A throw-away PostgreSQL (bin/cluster's, on a free port) for one run: its URL."""
    cl = cluster_script()
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    try:
        yield cl.pg_start(base, free_port())
    finally:
        cl.pg_stop(base)
        shutil.rmtree(base, ignore_errors=True)
