"""MicroPython `ntptime` on CPython: the host clock is already right."""

host = "pool.ntp.org"


def settime() -> None:
    pass
