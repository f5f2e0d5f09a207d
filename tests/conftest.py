"""Shared fixtures: free ports and tools every test folder may use."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# A pytest-xdist worker starts with COLUMNS=80 in its environment (seen in its
# /proc/PID/environ; the shell had none), and rich's Console fixes its width for good when
# COLUMNS is set as it is made (`planty_broker.cli.client.console`, made at import): the CLI
# tests' own COLUMNS (CliRunner's env) then changed nothing and their tables were cut at 80.
# Tests set it where they need it.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)


def worker_id() -> str:
    """This test process under pytest-xdist ("gw0", "gw1", ...), else "main"."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


# Test ports come from 10000-19999: below the gateway's own picks (mqttserver/ports.py,
# 20000 up to the ephemeral range) and below the kernel's ephemeral range, so neither an
# outgoing connection nor a port the kernel gives a RabbitMQ node or a script takes one
# between its pick and its bind. Each xdist worker has its own slice of that range, and a
# process never hands out the same port twice (it may not be bound yet).
_PORTS_LOW, _PORTS_HIGH = 10000, 20000
_given: set[int] = set()
_rng = random.Random()


def _port_slice() -> range:
    worker = worker_id()
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker.startswith("gw") else 0
    size = (_PORTS_HIGH - _PORTS_LOW) // max(count, 1)
    return range(_PORTS_LOW + index * size, _PORTS_LOW + (index + 1) * size)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free on loopback right now, this worker's own (never the busy standard ones)."""
    ports = _port_slice()
    if len(_given) > len(ports) // 2:
        _given.clear()  # a very long session: the first ones are long closed
    for _ in range(500):
        port = _rng.choice(ports)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {ports.start}-{ports.stop - 1}")


_REAL_COMPONENT_DIRS = ("integration", "browser")


def _xdist_group(item: pytest.Item) -> str | None:
    """The heavy singletons, each run by one pytest-xdist worker (`--dist loadgroup`, bin/test):
    the Firestore emulator (a JVM) and the browser with its gateway and fleet are started
    once, not by every worker; RabbitMQ nodes (15-35 s each, 3 in the cluster check) start
    one set at a time. Everything else is spread test by test."""
    parts = item.path.parts
    if "browser" in parts:
        return "browser"
    if "firestore" in parts and "integration" in parts:
        return "firestore"
    if "cluster" in parts and "integration" in parts:
        return "rabbitmq"
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "rabbitmq" in callspec.params.values():
        return "rabbitmq"  # the authority contract's RabbitMQ case shares one node
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One rerun for tests against real components (Mosquitto, databases, emulator, browser).

    They share a 2-core machine with those processes; a rerun shows as "R" in the summary
    and is a bug to look at, never noise. Unit and property tests are never rerun: a
    failure there is deterministic and must fail the run.
    """
    for item in items:
        parts = item.path.parts
        is_real = any(d in parts for d in _REAL_COMPONENT_DIRS) or bool(
            item.get_closest_marker("integration")
        )
        if is_real and "unit" not in parts:
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))
        group = _xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


_RERUN_CAUSES: list[tuple[str, str]] = []  # (test id, why its first try failed)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep why a test was rerun: the summary lists only its name, and a rerun is a bug to fix."""
    if report.outcome == "rerun" and len(_RERUN_CAUSES) < 20:
        text = str(report.longrepr or "")
        lines = text.splitlines()
        tail = lines[-40:] if len(lines) > 40 else lines  # the assertion and where it was
        _RERUN_CAUSES.append((report.nodeid, "\n".join(tail)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for nodeid, why in _RERUN_CAUSES:
        terminalreporter.write_sep("-", f"why {nodeid} was rerun (its first try)")
        terminalreporter.write_line(why)


@pytest.fixture
def port_factory() -> Callable[[], int]:
    return free_port


def remove_mosquitto_fallbacks(under: Path | None = None) -> list[Path]:
    """Remove Mosquitto folders in /var/lib/planty-mosquitto (mqttserver/process.py) made for
    data folders under `under`, or for data folders that no longer exist (a test's temporary
    folder, removed). Another run's folders, whose data folders still exist, stay."""
    from planty_broker.mqttserver.process import FALLBACK_MARKER, FALLBACK_ROOT

    removed = []
    if not FALLBACK_ROOT.is_dir():
        return removed
    for folder in FALLBACK_ROOT.iterdir():
        try:
            data_dir = Path((folder / FALLBACK_MARKER).read_text().strip())
        except (OSError, UnicodeDecodeError):
            continue  # not ours, or being created right now
        mine = under is not None and data_dir.is_relative_to(under)
        if mine or not data_dir.exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if worker_id() == "main":  # an xdist worker leaves it to the controller, at the very end
        with contextlib.suppress(OSError):  # not empty: another run's folders
            FALLBACK_ROOT.rmdir()
    return removed


def pytest_sessionstart(session: pytest.Session) -> None:
    """Set-ups a killed test run left running (RabbitMQ nodes, a private PostgreSQL, gateways,
    Mosquittos in /tmp/planty-cl-* and the like) are stopped and removed, one line each;
    those of a test run still going (another worktree's) stay (tests/stale.py)."""
    if worker_id() != "main":
        return  # the xdist controller (or the only process) sweeps, once
    from tests.stale import sweep

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in sweep():
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The xdist controller, once every worker is done: the emptied fallback root goes (a
    worker removing it could race another worker's Mosquitto making its folder in it)."""
    if worker_id() == "main" and getattr(session.config.option, "numprocesses", None):
        from planty_broker.mqttserver.process import FALLBACK_ROOT

        with contextlib.suppress(OSError):
            FALLBACK_ROOT.rmdir()


@pytest.fixture(autouse=True, scope="session")
def _no_mosquitto_folders_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite leaves nothing behind: a gateway started as root on a data folder in pytest's
    0700 temporary folder keeps Mosquitto's files in /var/lib/planty-mosquitto/<id>."""
    yield
    remove_mosquitto_fallbacks(tmp_path_factory.getbasetemp())


# The machine runs integration tests beside the property tests: no per-example deadline,
# and slow data generation is not a failure (it says nothing about our code).
from hypothesis import HealthCheck  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

hypothesis_settings.register_profile(
    "planty", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("planty")
