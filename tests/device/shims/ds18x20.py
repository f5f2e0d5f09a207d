"""MicroPython `ds18x20` on CPython: one sensor on the bus reading a settable temperature."""

from __future__ import annotations

from typing import Any

celsius = 21.5


class DS18X20:
    def __init__(self, ow: Any) -> None:
        self.ow = ow

    def scan(self) -> list[bytearray]:
        return [bytearray(b"\x28\xff\x00\x00\x00\x00\x00\x01")]

    def convert_temp(self) -> None:
        pass

    def read_temp(self, rom: bytearray) -> float:
        return celsius
