"""Shared fixtures: free ports and tools every test folder may use."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest


def free_port() -> int:
    """A TCP port free on loopback right now (never the busy standard ones)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port_factory() -> Callable[[], int]:
    return free_port


# The machine runs integration tests beside the property tests: no per-example deadline,
# and slow data generation is not a failure (it says nothing about our code).
from hypothesis import HealthCheck  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

hypothesis_settings.register_profile(
    "planty", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("planty")
