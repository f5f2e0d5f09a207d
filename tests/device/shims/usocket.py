"""MicroPython `usocket` on CPython: stream read/write with MicroPython's semantics."""

from __future__ import annotations

import socket as _socket
import ssl as _ssl
from typing import Any

AF_INET = _socket.AF_INET
SOCK_STREAM = _socket.SOCK_STREAM


class socket:  # noqa: N801 - MicroPython's name
    """A socket whose read(n) loops to n bytes when blocking and returns None when it would block."""

    def __init__(
        self, af: int = AF_INET, kind: int = SOCK_STREAM, proto: int = 0, *, _sock: Any = None
    ) -> None:
        self._s = _sock if _sock is not None else _socket.socket(af, kind, proto)
        self._blocking = True

    def connect(self, addr: tuple[str, int]) -> None:
        try:
            self._s.connect(addr)
        except TimeoutError as exc:
            raise OSError(110, "ETIMEDOUT") from exc

    def settimeout(self, t: float | None) -> None:
        self._s.settimeout(t)
        self._blocking = t != 0

    def setblocking(self, flag: bool) -> None:
        self._s.setblocking(flag)
        self._blocking = flag

    def read(self, n: int = 4096) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self._s.recv(n - len(buf))
            except (BlockingIOError, _ssl.SSLWantReadError):
                if not buf:
                    return None
                # MicroPython returns what it has; the caller switches to blocking next.
                return buf
            except TimeoutError as exc:
                raise OSError(110, "ETIMEDOUT") from exc
            if not chunk:
                break
            buf += chunk
            if not self._blocking:
                break
        return buf

    def write(self, buf: bytes | bytearray | str, n: int | None = None) -> int:
        data = buf.encode() if isinstance(buf, str) else bytes(buf)
        if n is not None:
            data = data[:n]
        try:
            self._s.sendall(data)
        except TimeoutError as exc:
            raise OSError(110, "ETIMEDOUT") from exc
        return len(data)

    def close(self) -> None:
        self._s.close()


def getaddrinfo(host: str, port: int, *_: Any) -> list[tuple[Any, ...]]:
    """IPv4 only, like an ESP32 station."""
    return _socket.getaddrinfo(host, port, AF_INET, SOCK_STREAM)
