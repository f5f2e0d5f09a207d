"""Shared fixtures: free ports and tools every test folder may use."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port free on loopback right now (never the busy standard ones)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_REAL_COMPONENT_DIRS = ("integration", "browser")


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
    with contextlib.suppress(OSError):  # not empty: another run's folders
        FALLBACK_ROOT.rmdir()
    return removed


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
