"""Logins seen by Mosquitto, read from its log file: accepted (with username) and refused.

Mosquitto 2.0 has no API for login events, but logs them (notice level):

    New connection from 10.0.0.7:51234 on port 8883.
    New client connected from 10.0.0.7:51234 as dev-a (p2, c1, k60, u'dev-a').
    Client <unknown> disconnected, not authorised.
    OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed

A refused login names neither the username nor the address: Mosquitto logs it
before it knows who the client is. The parser pairs it with the oldest
connection still waiting for its outcome, which is exact unless several logins
are in flight at the same moment (then the address may be another one of them).
`LogTail` follows the file across Mosquitto's restarts and log rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from planty_broker.tasks import spawn

log = logging.getLogger(__name__)

_LINE = re.compile(r"^\S+?: (?P<msg>.*)$")
_NEW_CONN = re.compile(
    r"^New connection from (?P<addr>\S+):(?P<port>\d+) on port (?P<lport>\d+)\.$"
)
_CONNECTED = re.compile(
    r"^New client connected from (?P<addr>\S+):(?P<port>\d+) as (?P<cid>\S+) "
    r"\(.*u'(?P<user>[^']*)'\)\.$"
)
_REFUSED = re.compile(r"^Client <unknown> disconnected, (?P<why>not authorised|[^.]*)\.?$")
_OPENSSL = re.compile(r"^OpenSSL Error\[\d+\]: error:[0-9A-Fa-f]+:[^:]*::?(?P<what>.*)$")
_PENDING_MAX = 10_000
_PENDING_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class LoginAccepted:
    username: str
    address: str  # host part only
    listener_port: int | None


@dataclass(frozen=True, slots=True)
class LoginRefused:
    reason: str  # "not_authorised", "tls: certificate verify failed", ...
    address: str | None
    listener_port: int | None


LoginEvent = LoginAccepted | LoginRefused


class LoginLogParser:
    """Turns Mosquitto log lines into login events (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (address, source port) -> (listener port, seen at), oldest first
        self._pending: OrderedDict[tuple[str, int], tuple[int, float]] = OrderedDict()
        self._tls_error: str | None = None

    def feed(self, line: str) -> LoginEvent | None:
        m = _LINE.match(line.rstrip("\r\n"))
        if m is None:
            return None
        msg = m.group("msg")
        if msg.startswith("New connection from "):
            c = _NEW_CONN.match(msg)
            if c is not None:
                self._expire()
                key = (c.group("addr"), int(c.group("port")))
                self._pending[key] = (int(c.group("lport")), self._clock())
                if len(self._pending) > _PENDING_MAX:
                    self._pending.popitem(last=False)
            return None
        if msg.startswith("New client connected from "):
            c = _CONNECTED.match(msg)
            if c is None:
                return None
            source = c.group("addr")
            entry = self._pending.pop((source, int(c.group("port"))), None)
            return LoginAccepted(c.group("user"), _host(source), entry[0] if entry else None)
        if msg.startswith("OpenSSL Error"):
            o = _OPENSSL.match(msg)
            if o is not None and self._tls_error is None:
                self._tls_error = o.group("what").strip() or "handshake failed"
            return None
        if msg.startswith("Client <unknown> disconnected"):
            r = _REFUSED.match(msg)
            why = r.group("why") if r is not None else "refused"
            if why == "not authorised":
                reason = "not_authorised"
            elif self._tls_error is not None:
                reason = f"tls: {self._tls_error}"
            else:
                reason = why.strip() or "refused"
            self._tls_error = None
            addr: str | None = None
            lport: int | None = None
            if self._pending:
                (a, _p), (lport, _t) = self._pending.popitem(last=False)
                addr = _host(a)
            return LoginRefused(reason, addr, lport)
        return None

    def _expire(self) -> None:
        now = self._clock()
        while self._pending:
            key, (_lport, at) = next(iter(self._pending.items()))
            if now - at < _PENDING_TTL_S:
                break
            del self._pending[key]


def _host(address: str) -> str:
    return address.strip("[]")


class LogTail:
    """Follows a log file (from its end at start) and hands each new line to `on_line`."""

    def __init__(self, path: Path, on_line: Callable[[str], None], *, poll_s: float = 0.1) -> None:
        self._path = path
        self._on_line = on_line
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self._inode: int | None = None
        self._offset = 0
        self._partial = ""

    async def start(self) -> None:
        try:
            st = self._path.stat()
            self._inode, self._offset = st.st_ino, st.st_size
        except FileNotFoundError:
            self._inode, self._offset = None, 0
        self._task = spawn("mosquitto-log-tail", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poll(self) -> None:
        """Read what was appended since the last poll (also after rotation or truncation)."""
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return
        if st.st_ino != self._inode or st.st_size < self._offset:
            self._inode, self._offset, self._partial = st.st_ino, 0, ""
        if st.st_size == self._offset:
            return
        with self._path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read(st.st_size - self._offset)
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", errors="replace")
        *lines, self._partial = text.split("\n")
        for line in lines:
            try:
                self._on_line(line)
            except Exception:
                log.exception("handling a Mosquitto log line failed")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            self.poll()
