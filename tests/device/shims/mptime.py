"""Adds MicroPython's time.ticks_* / sleep_ms and gc.mem_free to CPython's modules.

ticks wrap every 2**30 ms as on the board, and start 20 s before the wrap, so code that
subtracts ticks instead of using ticks_diff breaks in the tests as it would on an ESP32.
"""

from __future__ import annotations

import gc
import time

TICKS_PERIOD = 1 << 30
_MAX = TICKS_PERIOD - 1
_HALF = TICKS_PERIOD // 2
_START = time.monotonic_ns() // 1_000_000
_OFFSET = TICKS_PERIOD - 20_000


def ticks_ms() -> int:
    return (time.monotonic_ns() // 1_000_000 - _START + _OFFSET) & _MAX


def ticks_us() -> int:
    return (time.monotonic_ns() // 1_000 - _START * 1000 + _OFFSET * 1000) & _MAX


def ticks_add(ticks: int, delta: int) -> int:
    return (ticks + delta) & _MAX


def ticks_diff(a: int, b: int) -> int:
    return ((a - b + _HALF) & _MAX) - _HALF


def sleep_ms(ms: int) -> None:
    time.sleep(max(0, ms) / 1000)


def sleep_us(us: int) -> None:
    time.sleep(max(0, us) / 1_000_000)


def install() -> None:
    for name, fn in (
        ("ticks_ms", ticks_ms),
        ("ticks_us", ticks_us),
        ("ticks_add", ticks_add),
        ("ticks_diff", ticks_diff),
        ("sleep_ms", sleep_ms),
        ("sleep_us", sleep_us),
    ):
        setattr(time, name, fn)
    gc.mem_free = lambda: 111_000  # type: ignore[attr-defined]
    gc.mem_alloc = lambda: 9_000  # type: ignore[attr-defined]
