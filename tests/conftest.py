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
