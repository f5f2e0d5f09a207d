"""After start-up: start-up's objects are frozen out of the collector's walks, and
PLANTY_SLOW_CALLBACK_MS turns on asyncio's slow-callback log (a profiling aid, issue 17)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from planty_broker.app import SLOW_CALLBACK_ENV, _after_start


def test_start_up_objects_are_frozen_and_the_slow_callback_log_is_opt_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def check(slow: str | None) -> tuple[int, bool, float]:
        if slow is None:
            monkeypatch.delenv(SLOW_CALLBACK_ENV, raising=False)
        else:
            monkeypatch.setenv(SLOW_CALLBACK_ENV, slow)
        _after_start()
        loop = asyncio.get_running_loop()
        return gc.get_freeze_count(), loop.get_debug(), loop.slow_callback_duration

    try:
        frozen, debug, _ = asyncio.run(check(None))
        assert frozen > 0 and not debug
        _, debug, slow_s = asyncio.run(check("20"))
        assert debug and slow_s == pytest.approx(0.02)
    finally:
        gc.unfreeze()
