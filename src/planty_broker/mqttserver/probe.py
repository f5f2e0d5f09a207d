"""A minimal MQTT 3.1.1 CONNECT/CONNACK exchange: proves Mosquitto is up and checks passwords.

The supervisor uses it (with its own throw-away account, never the gateway's,
whose persistent session a clean-session probe would wipe) to know when
Mosquitto really serves clients, not merely that a port is open.
"""

from __future__ import annotations

import asyncio
import contextlib

from planty_broker.errors import MqttServerError

CONNACK_ACCEPTED = 0
CONNACK_NOT_AUTHORIZED = 5


class ProbeError(MqttServerError, OSError):
    """The peer did not answer like an MQTT server."""


async def mqtt_connect(host: str, port: int, username: str, password: str) -> int:
    """CONNECT (clean session) and return the CONNACK code; 0 = accepted (then DISCONNECT)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(connect_packet(username, username, password))
        await writer.drain()
        try:
            head = await reader.readexactly(4)
        except asyncio.IncompleteReadError:
            raise ProbeError("connection closed before CONNACK") from None
        if head[0] != 0x20 or head[1] != 2:
            raise ProbeError(f"not a CONNACK: {head.hex()}")
        code = head[3]
        if code == CONNACK_ACCEPTED:
            writer.write(b"\xe0\x00")  # DISCONNECT
            await writer.drain()
        return code
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def connect_packet(
    client_id: str, username: str | None, password: str | None, keepalive: int = 10
) -> bytes:
    """An MQTT 3.1.1 CONNECT with clean session and the username and password given (None:
    left out, as a device with a client certificate sends it)."""
    flags = 0x02
    creds = b""
    if username is not None:
        flags |= 0x80
        creds += _string(username.encode())
        if password is not None:
            flags |= 0x40
            creds += _string(password.encode())
    body = (
        _string(b"MQTT")
        + bytes([4, flags])
        + keepalive.to_bytes(2, "big")
        + _string(client_id.encode())
        + creds
    )
    return b"\x10" + _remaining_length(len(body)) + body


def _string(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
