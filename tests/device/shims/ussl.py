"""MicroPython `ussl.wrap_socket` on CPython's ssl, returning a MicroPython-style stream."""

from __future__ import annotations

import ssl as _ssl

from usocket import socket

CERT_NONE = _ssl.CERT_NONE
CERT_OPTIONAL = _ssl.CERT_OPTIONAL
CERT_REQUIRED = _ssl.CERT_REQUIRED


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
    if server_side or key or cert:
        raise NotImplementedError("the shim only does the client side")
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = cert_reqs == CERT_REQUIRED and server_hostname is not None
    ctx.verify_mode = cert_reqs
    if cadata is not None:
        ctx.load_verify_locations(cadata=cadata)
    raw = sock._s
    raw.settimeout(10)
    ss = ctx.wrap_socket(raw, server_hostname=server_hostname, do_handshake_on_connect=do_handshake)
    ss.settimeout(None)
    return socket(_sock=ss)
