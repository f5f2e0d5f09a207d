"""The gateway's link on a RabbitMQ cluster (issue 15): AMQP 0-9-1 instead of MQTT.

Devices still speak MQTT (v1, unchanged) to any node; RabbitMQ's MQTT plugin routes
their publishes onto `amq.topic` (`/` becomes `.`). Every gateway instance consumes
one replicated **quorum queue** bound to the device channels it handles, as a
competing consumer with manual acks:

- a message is acked to RabbitMQ only when the handler calls `ack()`, which the ingest
  path does after the commit (the same contract as `MqttLink`);
- an instance that dies (or loses its channel) leaves its unacked messages to the queue,
  which hands them to another instance: nothing acknowledged to a device is lost while a
  majority of the quorum queue's nodes is up (measured: docs/scale-out.md);
- an `ack` from a channel that has since closed is dropped (delivery tags are per
  channel; the message was already requeued).

Publishing (commands to devices) goes to `amq.topic` with publisher confirms; the MQTT
plugin delivers it to the device's subscription. Reconnects walk the list of nodes with
jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp.commands import Basic

from planty_broker.backoff import Backoff
from planty_broker.tasks import spawn
from planty_broker.transport.mqtt import MessageHandler, MqttConnectError, MqttError
from planty_broker.transport.reconnect import Connects, Reconnect

log = logging.getLogger(__name__)

EXCHANGE = "amq.topic"
_SWAP = str.maketrans("/.", "./")


def routing_key(topic: str) -> str:
    """An MQTT topic as RabbitMQ's MQTT plugin routes it (`/` <-> `.`)."""
    return topic.translate(_SWAP)


def binding_key(topic_filter: str) -> str:
    """An MQTT subscription filter as an amq.topic binding key (`+` -> `*`, `#` stays)."""
    return ".".join("*" if p == "+" else routing_key(p) for p in topic_filter.split("/"))


class _Consumer:
    """One queue this link consumes: its bindings on amq.topic and its handler."""

    def __init__(
        self, queue: str, subscriptions: Sequence[tuple[str, int]], handler: MessageHandler
    ) -> None:
        self.queue = queue
        self.bindings = sorted({binding_key(t) for t, _ in subscriptions})
        self.handler = handler


class AmqpLink(Connects):
    """Competing consumer of one quorum queue + publisher on amq.topic (module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        queue: str,
        subscriptions: Sequence[tuple[str, int]],
        handler: MessageHandler,
        *,
        prefetch: int = 1000,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if not urls:
            raise ValueError("AmqpLink needs at least one AMQP URL")
        self._urls = list(urls)
        self._consumers: list[_Consumer] = [_Consumer(queue, subscriptions, handler)]
        self._prefetch = prefetch
        self._timeout = connect_timeout_s
        self._conn: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._pub: AbstractChannel | None = None
        self._generation = 0
        self._connected = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._reconnect = Reconnect("AMQP link", Backoff(0.5, 10.0, jitter=0.5))
        self._next = 0
        self._unacked = 0
        self._pending: set[asyncio.Task[Any]] = set()
        self._consumer_tags: list[str] = []  # on the current channel
        self._taking = True  # False once a clean stop began: deliveries are left unacked
        self.node = ""  # the URL of the node we are on (for logs and tests)
        self.messages_in = 0
        self.messages_out = 0

    # ------------------------------------------------------------ the Link port

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return self._unacked

    @property
    def reconnects(self) -> int:
        return self._reconnect.count

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish to devices through amq.topic; returns once a node confirmed (or refused) it.

        A refusal (nack: the device's subscription queue was on a node that just died) is
        logged and not retried here: the outbox re-sends on its ack timeout, same id. A
        broken connection is retried once on the next node.
        """
        for attempt in range(2):
            await self._connected.wait()
            channel = self._pub
            if channel is None or channel.is_closed:
                self._lost(channel)
                continue
            try:
                await channel.basic_publish(
                    payload,
                    exchange=EXCHANGE,
                    routing_key=routing_key(topic),
                    properties=Basic.Properties(delivery_mode=2 if qos else 1),
                    timeout=self._timeout,
                )
            except aiormq.exceptions.DeliveryError as exc:
                log.warning("AMQP publish to %s refused (%s); the outbox re-sends", topic, exc)
                return
            except (aiormq.exceptions.AMQPError, ConnectionError, TimeoutError) as exc:
                log.warning("AMQP publish to %s failed (%s), attempt %d", topic, exc, attempt + 1)
                self._lost(channel)
                continue
            self.messages_out += 1
            return

    # ------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Connect to the first node that answers; raise MqttConnectError if none does."""
        errors: list[str] = []
        for _ in range(len(self._urls)):
            try:
                await self._open()
                break
            except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
                errors.append(f"{self._tried}: {exc}")
        else:
            raise MqttConnectError("no RabbitMQ node answered: " + "; ".join(errors))
        self._runner = spawn("amqp-link", self._keep_up)

    async def stop_consuming(self) -> None:
        """A clean stop's first step: cancel every consumer (basic.cancel), so RabbitMQ
        sends no more deliveries. One already on its way is not handed to its handler: it
        stays unacked and RabbitMQ gives it to another instance when the channel closes.
        What was handed over before is still acked (`close()` sends those acks)."""
        self._taking = False
        channel = self._channel
        if channel is None or channel.is_closed:
            return
        for tag in list(self._consumer_tags):
            try:
                await asyncio.wait_for(channel.basic_cancel(tag), self._timeout)
            except (aiormq.exceptions.AMQPError, ConnectionError, TimeoutError) as exc:
                log.info("AMQP basic.cancel %s failed (%s); closing will stop it", tag, exc)
        self._consumer_tags.clear()

    async def close(self, ack_timeout_s: float = 5.0) -> None:
        """Close cleanly: every ack already given is written before the channel closes.

        aiormq's `Connection.close()` cancels its writer task, which then writes
        `Connection.Close` at once: frames still in its queue (acks the handler gave a
        moment ago) are dropped, and RabbitMQ gives those messages, already committed,
        to another instance (measured: 7 readings stored twice at a SIGTERM under load,
        tests/integration/cluster/test_clean_stop.py). So: wait until each ack's frame is
        written (`basic_ack` returns once it is), then close the channels (`Channel.Close`
        goes after the acks on the same channel and RabbitMQ handles a channel's frames in
        order), then the connection."""
        self._closing = True
        self._taking = False
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        pending = [t for t in self._pending if not t.done()]
        if pending:
            log.info("AMQP close: writing %d acks first", len(pending))
            _done, late = await asyncio.wait(pending, timeout=ack_timeout_s)
            if late:
                log.warning("AMQP close: %d acks not written in %.0f s", len(late), ack_timeout_s)
        self._connected.clear()
        conn, channels = self._conn, (self._channel, self._pub)
        self._conn = self._channel = self._pub = None
        for channel in channels:
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), ack_timeout_s)
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    @property
    def _tried(self) -> str:
        """The node of the last attempt, for logs."""
        return _safe(self._urls[(self._next - 1) % len(self._urls)])

    async def _open(self) -> None:
        url = self._urls[self._next % len(self._urls)]
        self._next += 1
        conn = await asyncio.wait_for(aiormq.connect(url), self._timeout)
        try:
            channel = await conn.channel(publisher_confirms=False)
            await channel.basic_qos(prefetch_count=self._prefetch)
            pub = await conn.channel(publisher_confirms=True)
            self._generation += 1
            self._consumer_tags = []
            for consumer in self._consumers:
                await self._consume(channel, consumer)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        self._conn, self._channel, self._pub = conn, channel, pub
        self._unacked = 0
        self.node = _safe(url)
        self._reconnect.up(self.node)
        self._connected.set()
        log.info(
            "AMQP link on %s, consuming %s", self.node, ", ".join(c.queue for c in self._consumers)
        )

    async def add_queue(
        self, queue: str, subscriptions: Sequence[tuple[str, int]], handler: MessageHandler
    ) -> None:
        """Consume one more quorum queue (now, and after every reconnect)."""
        consumer = _Consumer(queue, subscriptions, handler)
        self._consumers.append(consumer)
        channel = self._channel
        if channel is not None and not channel.is_closed:
            await self._consume(channel, consumer)

    async def _consume(self, channel: AbstractChannel, consumer: _Consumer) -> None:
        await channel.queue_declare(
            consumer.queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        for key in consumer.bindings:
            await channel.queue_bind(consumer.queue, EXCHANGE, routing_key=key)
        generation, handler = self._generation, consumer.handler

        async def on_message(message: DeliveredMessage) -> None:
            self._deliver(message, channel, generation, handler)

        ok = await channel.basic_consume(consumer.queue, on_message, no_ack=False)
        if ok.consumer_tag:
            self._consumer_tags.append(ok.consumer_tag)

    async def _keep_up(self) -> None:
        """Wait for the connection to close; then reconnect, next node first."""
        while not self._closing:
            conn = self._conn
            if conn is not None:
                # `closing` may end cancelled: wait without letting that cancel us
                await asyncio.wait({asyncio.ensure_future(conn.closing)})
            if self._closing:
                return
            if self._connected.is_set():
                self._reconnect.lost(self.node)  # to the next node first
            self._connected.clear()
            self._conn = self._channel = self._pub = None
            while not self._closing:
                try:
                    await self._open()
                    break
                except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
                    await asyncio.sleep(self._reconnect.failed(self._tried, exc))

    def _lost(self, channel: AbstractChannel | None) -> None:
        """A publish failed on `channel`: drop the connection so `_keep_up` moves on."""
        if channel is self._pub and self._conn is not None:
            self._connected.clear()
            conn = self._conn
            task = asyncio.ensure_future(conn.close())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    # ------------------------------------------------------------ delivery

    def _deliver(
        self,
        message: DeliveredMessage,
        channel: AbstractChannel,
        generation: int,
        handler: MessageHandler,
    ) -> None:
        if not self._taking:
            return  # stopping: unacked, RabbitMQ requeues it when the channel closes
        self.messages_in += 1
        self._unacked += 1
        tag = message.delivery_tag or 0
        topic = routing_key(message.routing_key or "")
        done = False

        def ack() -> None:
            nonlocal done
            if done:
                return
            done = True
            if generation != self._generation or channel.is_closed:
                return  # that channel is gone: RabbitMQ requeued the message already
            self._unacked -= 1
            task = asyncio.ensure_future(channel.basic_ack(tag))
            self._pending.add(task)
            task.add_done_callback(self._ack_done)

        try:
            handler(topic, message.body, False, ack)
        except Exception:
            log.exception("message handler failed on %s; it will be redelivered", topic)

    def _ack_done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("AMQP ack lost with its channel: %s (redelivered)", task.exception())


def _safe(url: str) -> str:
    """An AMQP URL without its password, for logs."""
    _head, sep, tail = url.rpartition("@")
    return f"amqp://...@{tail}" if sep else url


__all__ = ["AmqpLink", "MqttError", "binding_key", "routing_key"]
