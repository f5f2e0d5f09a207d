"""Shared by the Firestore unit tests (which use the in-memory port, no server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `check` until truthy; fail with its last value (generous: a loaded 2-core CI
    machine once took over 2 s for a heartbeat; a pass returns at once)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last = check()
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value: {last!r})")
        await asyncio.sleep(0.01)
