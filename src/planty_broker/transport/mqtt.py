"""The gateway's own MQTT connection (gmqtt), as an async context manager.

Why gmqtt: measured fastest on this machine (see docs/benchmarks.md). Its own
non-optimistic mode runs one asyncio task per message; we take over QoS 1
delivery instead: the handler gets `ack`, a callable that sends the PUBACK,
and calls it only once the message is durably stored (for telemetry: when its
batch commits). A kill -9 between receipt and storage loses nothing: the MQTT
server redelivers unacknowledged messages to our persistent session. An `ack`
from a connection that has since been replaced is dropped, never sent on the
new one (packet ids are per connection).

gmqtt has no flow control of its own, so `publish` caps the number of unacked
QoS 1 publishes (`max_inflight`). Reconnects use jittered exponential backoff;
subscriptions are restored on every connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from planty_broker.backoff import Backoff
from planty_broker.errors import MqttServerError
from planty_broker.ports.link import no_ack
from planty_broker.transport.gmqtt_hooks import QosStorage, puback_for, take_over_qos1
from planty_broker.transport.reconnect import Connects, Reconnect

log = logging.getLogger(__name__)

Ack = Callable[[], None]
# handler(topic, payload, retain, ack): must call ack() once the message is safe (or never,
# to have it redelivered after a reconnect). Called synchronously on the event loop.
MessageHandler = Callable[[str, bytes, bool, Ack], None]


class MqttError(MqttServerError):
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


class _InflightStorage(QosStorage):
    """gmqtt's outbound QoS store, with a wake-up when space frees for our in-flight cap."""

    def __init__(self) -> None:
        super().__init__()
        self.freed = asyncio.Event()

    def on_acked(self, mid: int) -> None:
        self.freed.set()

    def on_clear(self) -> None:
        self.freed.set()


class MqttLink(Connects):
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
        # Take over QoS 1 delivery (see the module docstring).
        take_over_qos1(self._client, self._on_qos1)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        self._connected = asyncio.Event()
        # Reconnect delays: 1, 2, 4 ... 30 s, each jittered by +-50%.
        self._reconnect = Reconnect("MQTT link", Backoff(1.0, 30.0, jitter=0.5))
        self.messages_in = 0
        self.messages_out = 0
        self.on_reconnect: Callable[[], None] | None = None
        # Called once all subscriptions of a connect are acknowledged (SUBACK).
        self.on_subscribed: Callable[[], None] | None = None
        self._subacks_pending = 0
        self._client.on_subscribe = self._on_subscribe
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return len(self._storage)

    @property
    def reconnects(self) -> int:
        return self._reconnect.count

    @property
    def _where(self) -> str:
        return f"{self._config.host}:{self._config.port}"

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
            ) from exc
        except Exception as exc:  # gmqtt raises its own errors for refused CONNACKs
            raise MqttConnectError(
                f"MQTT server {c.host}:{c.port} refused the connection: {exc}; "
                "check the gateway's MQTT username and password"
            ) from exc
        await asyncio.wait_for(self._connected.wait(), c.connect_timeout_s)

    async def close(self) -> None:
        self._closing = True
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
        client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        if self._reconnect.up(self._where) and self.on_reconnect:
            self.on_reconnect()
        self._subacks_pending = len(self._subscriptions)
        for topic, qos in self._subscriptions:
            client.subscribe(topic, qos=qos)
        self._connected.set()

    def _on_subscribe(self, client: Client, mid: int, qos: Any, properties: Any) -> None:
        self._subacks_pending -= 1
        if self._subacks_pending == 0 and self.on_subscribed is not None:
            try:
                self.on_subscribed()
            except Exception:
                log.exception("on_subscribed hook failed")

    def _on_disconnect(self, client: Client, packet: Any, exc: Exception | None = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._closing:
            self._reconnect.lost(self._where)
        delay = self._reconnect.failed(self._where, None if was else exc)
        client.set_config({"reconnect_retries": -1, "reconnect_delay": delay})

    def _on_message(
        self, client: Client, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        """QoS 0 (and anything not QoS 1): nothing to acknowledge."""
        self.messages_in += 1
        self._dispatch(topic, payload, bool(properties.get("retain", 0)), no_ack)
        return 0

    def _on_qos1(self, mid: int, payload: bytes, topic: str, properties: dict[str, Any]) -> None:
        self.messages_in += 1
        ack = puback_for(self._client, mid)
        self._dispatch(topic, payload, bool(properties.get("retain", 0)), ack)

    def _dispatch(self, topic: str, payload: bytes, retain: bool, ack: Ack) -> None:
        try:
            self._handler(topic, payload, retain, ack)
        except Exception:
            log.exception("message handler failed on %s; it will be redelivered", topic)
