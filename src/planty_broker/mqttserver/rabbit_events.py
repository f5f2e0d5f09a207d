"""RabbitMQ's own events on the lease holder (`rabbitmq_event_exchange`): MQTT logins
reported, and a client id that is not its username closed.

Mosquitto forces client id = username on the device listener; RabbitMQ 3.10's MQTT plugin
has no such setting, and client ids are cluster-wide: a device that connects with another
device's client id takes that device's session over (RabbitMQ closes the first one). It
cannot read or write the other's topics (its permissions are its own), but it can cut the
other device off again and again. RabbitMQ has no log we tail either, so logins were not
reported. Both come from the event exchange `amq.rabbitmq.event` (the plugin enabled on
every node, `rabbit_nodes.PLUGINS`), which every node publishes its events to:

- `connection.created` of an MQTT connection (`protocol` `{'MQTT',"3.1.1"}`): what 3.10.8
  sends has the username in `user`, the address in `peer_host` (an Erlang tuple,
  `{127,0,0,1}`) and the client id only inside `variable_map`, printed as an Erlang map
  (`#{<<"client_id">> => <<"dev-a">>}`). It is an accepted login (`AcceptedLogin`), and
  a client id other than the username gets every connection of that user closed
  (`close(username, reason)`: the management API's `DELETE
  /api/connections/username/{user}`, which RabbitMQ does at once; closing the one
  connection by name answers 404 until the management database's next statistics round,
  up to 5 s: docs/scale-out.md). That is every MQTT connection: on a Planty cluster only
  devices and claim slots speak MQTT;
- `user.authentication.failure` with `connection_type` `direct` (the MQTT plugin logs in
  through a direct connection; AMQP's are `network`): a refused login
  (`RefusedLogin`, reason `not_authorised`, with the username it tried, no address: the
  event has none).

Only the lease holder runs this (one instance acts, one reports). The queue is its own:
exclusive, deleted with the connection, at most `MAX_QUEUED` events (the oldest dropped
beyond), consumed with a prefetch of `PREFETCH` and acked after each event is handled.
An event that cannot be read is counted (`malformed`) and acked: it never stops the
consumer. Events published while the holder is away (a failover, a reconnect) are not
seen: a login is reported on its next connect, a hijack is closed when it connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

from planty_broker.backoff import Backoff
from planty_broker.ports.device_authority import AcceptedLogin, LoginEvent, RefusedLogin

log = logging.getLogger("planty_broker.mqttserver")

EVENT_EXCHANGE = "amq.rabbitmq.event"
BINDINGS = ("connection.created", "user.authentication.failure")
MAX_QUEUED = 10_000  # x-max-length of the event queue; the oldest are dropped beyond
PREFETCH = 100
MAX_CLOSING = 256  # users whose connections are being closed at once; beyond, not closed
REASON = "client id is not the username"
_WARN_EVERY_S = 10.0

_CLIENT_ID = re.compile(r'<<"client_id">>\s*=>\s*<<"((?:[^"\\]|\\.)*)"(?:/utf8)?>>')
_CLIENT_ID_BYTES = re.compile(r'<<"client_id">>\s*=>\s*<<([\d,\s]*)>>')
_ERLANG_IP = re.compile(r"^\{(\d+(?:,\d+){3}|\d+(?:,\d+){7})\}$")


@dataclass(frozen=True, slots=True)
class MqttConnection:
    """An MQTT connection RabbitMQ accepted."""

    name: str  # "127.0.0.1:39442 -> 127.0.0.1:60185"
    username: str
    client_id: str | None  # None: the event does not say (then nothing is closed)
    address: str


def parse_event(
    routing_key: str, headers: Mapping[str, Any]
) -> MqttConnection | RefusedLogin | None:
    """One event of the exchange: an MQTT connection, an MQTT login refused, or None (an
    event of another kind: AMQP connections, logins of the gateways). ValueError when an
    MQTT event lacks what it must carry."""
    if routing_key == "connection.created":
        if "MQTT" not in _text(headers.get("protocol")):
            return None
        name, user = _text(headers.get("name")), _text(headers.get("user"))
        if not name or not user:
            raise ValueError(f"connection.created without name or user: {sorted(headers)}")
        return MqttConnection(
            name, user, client_id_of(headers.get("variable_map")), _address(headers)
        )
    if routing_key == "user.authentication.failure":
        if _text(headers.get("connection_type")) != "direct":
            return None
        user = _text(headers.get("name"))
        return RefusedLogin("not_authorised", None, "token", user or None)
    return None


def client_id_of(variable_map: Any) -> str | None:
    """The MQTT client id in a `connection.created` event's `variable_map`: a table, or (what
    3.10.8 sends) the Erlang map printed as text. None if it is not there."""
    if isinstance(variable_map, Mapping):
        value = variable_map.get("client_id")
        return _text(value) if value is not None else None
    text = _text(variable_map)
    m = _CLIENT_ID.search(text)
    if m is not None:
        return re.sub(r"\\(.)", r"\1", m.group(1))
    m = _CLIENT_ID_BYTES.search(text)
    if m is not None:
        raw = [int(b) for b in m.group(1).replace(" ", "").split(",") if b]
        if all(0 <= b < 256 for b in raw):
            return bytes(raw).decode("utf-8", "replace")
    return None


def _address(headers: Mapping[str, Any]) -> str:
    """`peer_host` as an address: `{127,0,0,1}` -> `127.0.0.1` (an Erlang tuple)."""
    raw = _text(headers.get("peer_host"))
    m = _ERLANG_IP.match(raw.replace(" ", ""))
    if m is None:
        return raw
    parts = [int(p) for p in m.group(1).split(",")]
    try:
        if len(parts) == 4:
            return str(ipaddress.IPv4Address(bytes(parts)))
        return str(ipaddress.IPv6Address(b"".join(p.to_bytes(2, "big") for p in parts)))
    except (ValueError, OverflowError):
        return raw


def _text(value: Any) -> str:
    """A header value as text: str, bytes, or an Erlang string (a list of code points)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


Closer = Callable[[str, str], Awaitable[None]]


class RabbitEventWatch:
    """Consumes the event exchange (module docstring); `start()` and `stop()`."""

    def __init__(
        self,
        urls: Sequence[str],
        report: Callable[[LoginEvent], None],
        close: Closer,
        *,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if not urls:
            raise ValueError("RabbitEventWatch needs at least one AMQP URL")
        self._urls = list(urls)
        self._report = report
        self._close = close
        self._timeout = connect_timeout_s
        self._conn: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing: dict[str, asyncio.Task[None]] = {}  # username -> its close
        self._again: set[str] = set()  # users connected again while being closed
        self._next = 0
        self._warned_at: float | None = None
        self.connected = asyncio.Event()
        self.events = 0
        self.malformed = 0
        self.closed = 0  # users whose connections were closed for a client id
        self.not_closed = 0  # closes dropped (MAX_CLOSING at once) or failed

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rabbit-events")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._closing.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def _run(self) -> None:
        backoff = Backoff(0.5, 10.0, jitter=0.5)
        while True:
            url = self._urls[self._next % len(self._urls)]
            self._next += 1
            try:
                conn = await asyncio.wait_for(aiormq.connect(url), self._timeout)
            except Exception as exc:  # a node away, refused, or worse: the next one
                log.info("rabbitmq events: %s (next node in a moment)", exc)
                await asyncio.sleep(backoff.next())
                continue
            self._conn = conn
            try:
                await self._consume(conn)
                backoff.reset()
                self.connected.set()
                log.info("rabbitmq events: watching logins and client ids")
                await asyncio.wait({asyncio.ensure_future(conn.closing)})
            except aiormq.exceptions.ChannelNotFoundEntity as exc:  # no event exchange
                log.error(
                    "rabbitmq events: %s; enable the plugin rabbitmq_event_exchange on every "
                    "node (docs/scale-out.md): until then client ids are not held to the "
                    "username and logins are not reported",
                    exc,
                )
            except Exception as exc:  # the loop goes on whatever happened: reconnect
                log.warning("rabbitmq events: %r", exc)
            finally:
                self.connected.clear()
                self._conn = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
            log.warning("rabbitmq events: connection lost; reconnecting (events meanwhile unseen)")
            await asyncio.sleep(backoff.next())

    async def _consume(self, conn: AbstractConnection) -> None:
        channel = await conn.channel()
        await channel.basic_qos(prefetch_count=PREFETCH)
        declared = await channel.queue_declare(
            "",
            exclusive=True,
            auto_delete=True,
            arguments={"x-max-length": MAX_QUEUED, "x-overflow": "drop-head"},
        )
        queue = declared.queue
        if queue is None:
            raise aiormq.exceptions.AMQPError("no name for the event queue")
        for key in BINDINGS:
            await channel.queue_bind(queue, EVENT_EXCHANGE, routing_key=key)

        async def on_message(message: DeliveredMessage) -> None:
            try:
                headers = message.header.properties.headers or {}
            except AttributeError:  # no header frame: handle() counts it
                headers = {}
            self.handle(message.routing_key or "", headers)
            await _ack(channel, message)

        await channel.basic_consume(queue, on_message, no_ack=False)

    def handle(self, routing_key: str, headers: Mapping[str, Any]) -> None:
        """One event; never raises (a bad one is counted and logged, at most every 10 s)."""
        self.events += 1
        try:
            event = parse_event(routing_key, headers)
            if isinstance(event, RefusedLogin):
                self._report(event)
            elif isinstance(event, MqttConnection):
                self._report(AcceptedLogin(event.username, event.address, "token"))
                if event.client_id is not None and event.client_id != event.username:
                    self._refuse_client_id(event)
        except Exception as exc:
            self.malformed += 1
            self._warn(f"rabbitmq events: {self.malformed} event(s) not understood ({exc!r})")

    def _refuse_client_id(self, event: MqttConnection) -> None:
        user = event.username
        log.warning(
            "rabbitmq: %s connected as client id %r (connection %s from %s): closing its "
            "connections (%s)",
            user, event.client_id[:64] if event.client_id else "", event.name, event.address,
            REASON,
        )  # fmt: skip
        if user in self._closing:
            # A close of this user is under way; it may have listed the user's connections
            # before this one existed, so one more close follows it.
            self._again.add(user)
            return
        if len(self._closing) >= MAX_CLOSING:
            self.not_closed += 1
            self._warn(f"rabbitmq events: {self.not_closed} client-id close(s) not done")
            return
        task = asyncio.ensure_future(self._close_user(user))
        self._closing[user] = task
        task.add_done_callback(lambda _t: self._closing.pop(user, None))

    async def _close_user(self, user: str) -> None:
        while True:
            self._again.discard(user)
            try:
                await self._close(user, REASON)
                self.closed += 1
            except Exception as exc:
                self.not_closed += 1
                log.warning("rabbitmq: closing the connections of %s failed: %s", user, exc)
            if user not in self._again:
                return

    def _warn(self, message: str) -> None:
        now = asyncio.get_running_loop().time()
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning("%s", message)


async def _ack(channel: AbstractChannel, message: DeliveredMessage) -> None:
    with contextlib.suppress(aiormq.exceptions.AMQPError, ConnectionError):
        await channel.basic_ack(message.delivery_tag or 0)
