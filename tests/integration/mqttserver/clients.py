"""A real MQTT client (gmqtt) wrapped with queues, so tests can await what a device sees."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

from planty_broker.simulator.profile import client_cert_context


def device_tls(ca_pem: str) -> ssl.SSLContext:
    """What a device does: trust only our CA, check the host name, TLS 1.2 or newer."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


def cert_tls(ca_pem: str, cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """`device_tls` presenting a client certificate (the simulator's context)."""
    return client_cert_context.__wrapped__(ca_pem, cert_pem, key_pem)


class TestClient:
    """One MQTT 3.1.1 connection; received messages land in `messages`."""

    __test__ = False  # not a pytest class

    def __init__(
        self, client_id: str, username: str | None, password: str | None, *, clean: bool = True
    ) -> None:
        self.client = gmqtt.Client(client_id, clean_session=clean)
        if username is not None:  # None: no username, a client certificate logs in
            self.client.set_auth_credentials(username, password)
        # Never reconnect on its own: a test wants to see the kick, not a new session.
        # (gmqtt reconnects while failures <= retries, so 0 would still allow one.)
        self.client.set_config({"reconnect_retries": -2})
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.disconnected = asyncio.Event()
        self._subacks: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe

    async def connect(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        await asyncio.wait_for(
            self.client.connect(host, port, ssl=tls or False, keepalive=30, version=MQTTv311), 10
        )

    async def subscribe(self, topic: str, qos: int = 1) -> tuple[int, ...]:
        """Subscribe and return the SUBACK codes (128 = refused)."""
        mid = self.client.subscribe(topic, qos=qos)
        fut = self._subacks.setdefault(mid, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(fut, 5)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos)

    async def next_message(self, timeout: float = 5.0) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def receive_until(self, topic: str, payload: bytes, timeout: float = 5.0) -> list[Any]:
        """Every message received before (and including) the marker `topic`/`payload`."""
        seen: list[tuple[str, bytes]] = []
        while True:
            msg = await self.next_message(timeout)
            seen.append(msg)
            if msg == (topic, payload):
                return seen

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(), 5)

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        self.messages.put_nowait((topic, payload))
        return 0

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        self.disconnected.set()

    def _on_subscribe(self, client: Any, mid: int, qos: tuple[int, ...], props: Any) -> None:
        fut = self._subacks.setdefault(mid, asyncio.get_running_loop().create_future())
        if not fut.done():
            fut.set_result(tuple(qos))
