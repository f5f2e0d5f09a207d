"""MicroPython `onewire` on CPython: a bus object that a DS18X20 driver takes."""

from __future__ import annotations

from typing import Any


class OneWireError(Exception):
    pass


class OneWire:
    def __init__(self, pin: Any) -> None:
        self.pin = pin
