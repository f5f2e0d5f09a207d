"""The gateway's own MQTT connection (gmqtt), as an async context manager.

Why gmqtt: measured fastest on this machine (see docs/benchmarks.md), and with
`optimistic_acknowledgement=False` it sends the PUBACK of a QoS 1 message only
after our async handler returns, so a message is acknowledged only once it is
durably stored: a kill -9 between receipt and storage loses nothing, the MQTT
server redelivers it to our persistent session.

gmqtt has no flow control of its own, so `publish` caps the number of unacked
QoS 1 publishes (`max_inflight`). Reconnects use jittered exponential backoff;
subscriptions are restored on every connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.storage import PersistentStorage

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], Awaitable[None]]


class MqttError(Exception):
    """Root of MQTT link errors."""


class MqttConnectError(MqttError, ConnectionError):
    """The MQTT server cannot be reached or refused our credentials."""


@dataclass(frozen=True, slots=True)
class LinkConfig:
    host: str
    port: int
    client_id: str
    username: str = ""
    password: str = ""
    tls: ssl.SSLContext | None = None
    keepalive_s: int = 60
    max_inflight: int = 1000
    persistent_session: bool = True
    mqtt5: bool = True
    connect_timeout_s: float = 10.0


class _InflightStorage(PersistentStorage):  # type: ignore[misc]
    """gmqtt's outbound QoS store, with a wake-up when space frees for our in-flight cap."""

    def __init__(self) -> None:
        super().__init__()
        self.freed = asyncio.Event()

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self.freed.set()

    def clear(self) -> None:
        super().clear()
        self.freed.set()

    def __len__(self) -> int:
        return len(self._messages)


class MqttLink:
    """A persistent-session MQTT client that hands every message to one async handler."""

    def __init__(
        self, config: LinkConfig, subscriptions: Sequence[tuple[str, int]], handler: MessageHandler
    ) -> None:
        self._config = config
        self._subscriptions = list(subscriptions)
        self._handler = handler
        self._storage = _InflightStorage()
        props: dict[str, Any] = {}
        if config.mqtt5 and config.persistent_session:
            props["session_expiry_interval"] = 0xFFFFFFFF
        self._client = Client(
            config.client_id,
            clean_session=not config.persistent_session,
            optimistic_acknowledgement=False,
            persistent_storage=self._storage,
            **props,
        )
        if config.username:
            self._client.set_auth_credentials(config.username, config.password or None)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        self._connected = asyncio.Event()
        self._attempt = 0
        self.reconnects = 0
        self.messages_in = 0
        self.messages_out = 0
        self.on_reconnect: Callable[[], None] | None = None
        self._ever_connected = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return len(self._storage)

    async def __aenter__(self) -> MqttLink:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect once; raise MqttConnectError with a clear line if impossible."""
        c = self._config
        version = MQTTv50 if c.mqtt5 else MQTTv311
        try:
            async with asyncio.timeout(c.connect_timeout_s):
                await self._client.connect(
                    c.host, c.port, ssl=c.tls or False, keepalive=c.keepalive_s, version=version
                )
        except TimeoutError:
            raise MqttConnectError(
                f"MQTT server {c.host}:{c.port} did not answer within {c.connect_timeout_s:.0f} s"
            ) from None
        except OSError as exc:
            raise MqttConnectError(
                f"cannot reach the MQTT server at {c.host}:{c.port}: {exc.strerror or exc}"
            ) from None
        except Exception as exc:  # gmqtt raises its own errors for refused CONNACKs
            raise MqttConnectError(
                f"MQTT server {c.host}:{c.port} refused the connection: {exc}; "
                "check the gateway's MQTT username and password"
            ) from None
        await asyncio.wait_for(self._connected.wait(), c.connect_timeout_s)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.disconnect()
        self._connected.clear()

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish; waits while `max_inflight` QoS 1 messages are unacknowledged."""
        if qos > 0:
            while len(self._storage) >= self._config.max_inflight:
                self._storage.freed.clear()
                await self._storage.freed.wait()
        self._client.publish(topic, payload, qos=qos, retain=retain)
        self.messages_out += 1

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # ------------------------------------------------------------ gmqtt callbacks

    def _on_connect(self, client: Client, flags: int, rc: int, properties: Any) -> None:
        self._attempt = 0
        client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        if self._ever_connected:
            self.reconnects += 1
            log.info("MQTT link to %s:%d restored", self._config.host, self._config.port)
            if self.on_reconnect:
                self.on_reconnect()
        self._ever_connected = True
        for topic, qos in self._subscriptions:
            client.subscribe(topic, qos=qos)
        self._connected.set()

    def _on_disconnect(self, client: Client, packet: Any, exc: Exception | None = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._attempt += 1
        delay = min(30.0, 0.5 * 2 ** min(self._attempt, 6)) * (0.5 + random.random())  # noqa: S311
        client.set_config({"reconnect_retries": -1, "reconnect_delay": delay})
        if was:
            log.warning(
                "MQTT link to %s:%d lost; reconnecting with backoff",
                self._config.host,
                self._config.port,
            )

    async def _on_message(
        self, client: Client, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        self.messages_in += 1
        retain = bool(properties.get("retain", 0))
        await self._handler(topic, payload, retain)
        return 0  # PUBACK success, sent only now
