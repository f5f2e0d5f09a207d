"""Just enough of MicroPython's `machine` for main.py: pins keep their value, ADCs read a set value."""

from __future__ import annotations

from typing import Any, ClassVar

DEEPSLEEP_RESET = 4
PWRON_RESET = 1
slept: list[int] = []  # deepsleep() calls, in ms


class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 2
    levels: ClassVar[dict[int, int]] = {}

    def __init__(
        self, pin_id: int, mode: int = -1, pull: int = -1, value: int | None = None
    ) -> None:
        self.id = pin_id
        if value is not None:
            Pin.levels[pin_id] = value

    def value(self, v: int | None = None) -> int | None:
        if v is None:
            return Pin.levels.get(self.id, 0)
        Pin.levels[self.id] = 1 if v else 0
        return None

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)


class ADC:
    ATTN_11DB = 3
    raw: ClassVar[dict[int, int]] = {}

    def __init__(self, pin: Pin, atten: int | None = None) -> None:
        self.id = pin.id

    def atten(self, a: int) -> None:
        pass

    def read_u16(self) -> int:
        return ADC.raw.get(self.id, 30000)


class WDT:
    def __init__(self, timeout: int = 5000) -> None:
        self.timeout = timeout

    def feed(self) -> None:
        pass


def deepsleep(ms: int = 0) -> None:
    slept.append(ms)


def reset_cause() -> int:
    return PWRON_RESET


def unique_id() -> bytes:
    return b"\x24\x0a\xc4\x00\x00\x01"


def reset() -> Any:
    raise SystemExit("machine.reset()")
