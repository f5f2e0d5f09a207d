"""MicroPython `network.WLAN` on CPython: the link is up unless a test says otherwise."""

from __future__ import annotations

STA_IF = 0
up = True  # tests flip this to take Wi-Fi away


class WLAN:
    def __init__(self, interface: int = STA_IF) -> None:
        self._active = False

    def active(self, flag: bool | None = None) -> bool:
        if flag is not None:
            self._active = flag
        return self._active

    def connect(self, ssid: str, password: str) -> None:
        pass

    def isconnected(self) -> bool:
        return up and self._active

    def status(self, what: str | None = None) -> int:
        return -58 if what == "rssi" else 1010

    def ifconfig(self) -> tuple[str, str, str, str]:
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args: object, **kwargs: object) -> None:
        pass
