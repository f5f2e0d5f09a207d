"""MicroPython `esp32` on CPython: the chip's own temperature sensor."""


def mcu_temperature() -> int:
    return 41
