"""After start-up: start-up's objects are frozen out of the collector's walks, and
log.slow_callback_ms turns on asyncio's slow-callback log (a profiling aid, issue 17)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from planty_broker.app import _after_start


def test_start_up_objects_are_frozen_and_the_slow_callback_log_is_opt_in() -> None:
    async def check(slow_ms: float) -> tuple[int, bool, float]:
        _after_start(slow_ms)
        loop = asyncio.get_running_loop()
        return gc.get_freeze_count(), loop.get_debug(), loop.slow_callback_duration

    try:
        frozen, debug, _ = asyncio.run(check(0.0))
        assert frozen > 0 and not debug
        _, debug, slow_s = asyncio.run(check(20.0))
        assert debug and slow_s == pytest.approx(0.02)
    finally:
        gc.unfreeze()
