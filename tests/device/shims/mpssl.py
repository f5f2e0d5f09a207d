"""MicroPython's `ssl` (1.23 and newer) on CPython's ssl, returning MicroPython-style streams.

Not named `ssl` (CPython's own is already loaded) and not `ussl`: MicroPython 1.23 and newer
have no `ussl`, so neither do the tests. conftest hands this module to the device module as
its `ssl`; a test that plays MicroPython 1.22 (which still had `ussl`) registers it as `ussl`
itself, and only for that test.
"""

from __future__ import annotations

import ssl as _ssl
from typing import Any

from usocket import socket

CERT_NONE = _ssl.CERT_NONE
CERT_OPTIONAL = _ssl.CERT_OPTIONAL
CERT_REQUIRED = _ssl.CERT_REQUIRED
PROTOCOL_TLS_CLIENT = 0
PROTOCOL_TLS_SERVER = 1


class SSLContext:
    """The client half of MicroPython's SSLContext: verify_mode, cadata, wrap_socket."""

    def __init__(self, protocol: int) -> None:
        if protocol != PROTOCOL_TLS_CLIENT:
            raise NotImplementedError("the shim only does the client side")
        self.verify_mode = CERT_NONE
        self._cadata: Any = None

    def load_verify_locations(self, cafile: str | None = None, cadata: Any = None) -> None:
        self._cadata = cadata

    def wrap_socket(
        self,
        sock: socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        server_hostname: str | None = None,
    ) -> socket:
        ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = _ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = self.verify_mode == CERT_REQUIRED and server_hostname is not None
        ctx.verify_mode = _ssl.VerifyMode(self.verify_mode)
        if self._cadata is not None:
            ctx.load_verify_locations(cadata=self._cadata)
        raw = sock._s
        timeout = raw.gettimeout()
        raw.settimeout(10 if timeout is None else timeout)
        ss = ctx.wrap_socket(
            raw, server_hostname=server_hostname, do_handshake_on_connect=do_handshake_on_connect
        )
        ss.settimeout(timeout)
        return socket(_sock=ss)


def wrap_socket(
    sock: socket,
    server_side: bool = False,
    key: bytes | None = None,
    cert: bytes | None = None,
    cert_reqs: int = CERT_NONE,
    cadata: bytes | str | None = None,
    server_hostname: str | None = None,
    do_handshake: bool = True,
) -> socket:
    """The old `ussl.wrap_socket` signature, which MicroPython 1.22's ussl and ssl both had."""
    if server_side or key or cert:
        raise NotImplementedError("the shim only does the client side")
    ctx = SSLContext(PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = cert_reqs
    if cadata is not None:
        ctx.load_verify_locations(cadata=cadata)
    return ctx.wrap_socket(
        sock, server_hostname=server_hostname, do_handshake_on_connect=do_handshake
    )
