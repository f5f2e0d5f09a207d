"""Scale-out composition (issue 15): a gateway instance among several, on a RabbitMQ
cluster and one PostgreSQL. `app.py` uses this when `cluster.engine = "rabbitmq"`.

Every instance:
- consumes the quorum queue `cluster.queue` (telemetry) as a competing consumer and
  stores what it gets, acking each message to RabbitMQ only after its commit;
- serves the HTTP API, appends to the event log, re-reads the device registry every
  `REGISTRY_EVERY_S` (another instance may have added or removed a device).

One instance at a time, the holder of the PostgreSQL lease (`storage/sql_lease.py`),
also runs what must run once: the command outbox, presence, the rules and updates. It
consumes a second quorum queue, `<queue>.control`: status, acks, update acks, claim
requests, and a copy of every telemetry message (presence and the rules see every
reading; the copy is not stored). When it dies its session ends, PostgreSQL frees the
lock, and the next instance takes the lease, reloads the outbox (unacked commands are
re-sent with the same id), today's rule fires (cooldowns, budgets) and presence from the
store, and starts consuming the control queue, where the dead holder's unacked messages
wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from planty_broker.config import Settings
from planty_broker.mqttserver.rabbit_authority import RabbitAuthority
from planty_broker.mqttserver.rabbit_pki import cluster_pki
from planty_broker.ports.device_authority import DeviceEndpoint
from planty_broker.protocol import Channel, Topics
from planty_broker.services.ingest import IngestService
from planty_broker.services.registry import DeviceRegistry
from planty_broker.storage.sql_lease import PgLease
from planty_broker.tasks import spawn
from planty_broker.transport.amqp import AmqpLink
from planty_broker.transport.mqtt import MessageHandler

log = logging.getLogger(__name__)

REGISTRY_EVERY_S = 2.0
INGEST_CHANNELS = (Channel.TELEMETRY,)
CONTROL_CHANNELS = (Channel.STATUS, Channel.ACK, Channel.OTA_ACK)


def send_lease_owner() -> str:
    """This process's name on the outbox's send leases: host, pid and a random part, so a
    restarted instance (same host and pid after a reboot) never passes for its predecessor."""
    return f"{socket.gethostname()[:64]}/{os.getpid()}/{secrets.token_hex(4)}"


def cluster_authority(settings: Settings) -> RabbitAuthority:
    """The RabbitMQ authority. With `cluster.ca_key_file`, device certificates are issued
    by the cluster's CA and log in on the same listeners as tokens (`x509_port` = the token
    port), their CRL written to `cluster.crl_dir`."""
    c = settings.cluster
    nodes = tuple(_host_port(e) for e in c.split(c.device_endpoints))
    ca_pem = Path(c.ca_file).read_text() if c.ca_file else None
    pki = cluster_pki(Path(c.ca_file), Path(c.ca_key_file)) if c.ca_key_file else None
    x509_port = nodes[0][1] if pki is not None else 0
    return RabbitAuthority(
        c.split(c.management_urls),
        c.admin_user,
        c.admin_password,
        DeviceEndpoint(*nodes[0], True, ca_pem, x509_port, endpoints=nodes),
        topic_prefix=settings.mqtt.topic_prefix,
        secret_dir=Path(c.shared_dir) if c.shared_dir else settings.data_dir,
        pki=pki,
        crl_dir=Path(c.crl_dir) if c.crl_dir else None,
    )


def _host_port(endpoint: str) -> tuple[str, int]:
    """`host:port` (or `host`: port 8883) as in `cluster.device_endpoints`."""
    host, sep, port = endpoint.rpartition(":")
    return (host, int(port)) if sep and host else (endpoint, 8883)


class UnknownDeviceRefresh:
    """A message from a device this instance does not know yet may come from one another
    instance just registered: re-read the registry first (at most every `MIN_EVERY_S`,
    one read for every message waiting on it), then handle the message as usual."""

    MIN_EVERY_S = 0.5

    def __init__(self, registry: DeviceRegistry, topics: Topics, handle: MessageHandler) -> None:
        self._registry = registry
        self._topics = topics
        self._handle = handle
        self._pending: asyncio.Task[None] | None = None
        self._last = 0.0
        self.refreshes = 0

    def __call__(self, topic: str, payload: bytes, retain: bool, ack: Callable[[], None]) -> None:
        try:
            device_id = self._topics.parse(topic).device_id
        except ValueError:
            device_id = None  # a bad topic: the handler counts it
        if device_id is None or device_id in self._registry:
            self._handle(topic, payload, retain, ack)
            return
        task = self._pending
        if task is None or task.done():
            task = self._pending = asyncio.get_running_loop().create_task(self._refresh())

        def then(_t: asyncio.Task[None]) -> None:
            self._handle(topic, payload, retain, ack)

        task.add_done_callback(then)

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last + self.MIN_EVERY_S - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last = loop.time()
        self.refreshes += 1
        try:
            await self._registry.refresh()
        except Exception as exc:
            log.warning("registry refresh failed (%s)", exc)


def cluster_link(settings: Settings, topics: Topics, handler: MessageHandler) -> AmqpLink:
    c = settings.cluster
    subs = [(topics.subscription(ch), 1) for ch in INGEST_CHANNELS]
    return AmqpLink(c.split(c.amqp_urls), c.queue, subs, handler, prefetch=c.prefetch)


def control_subscriptions(
    topics: Topics, extra: Sequence[tuple[str, int]]
) -> list[tuple[str, int]]:
    """What the lease holder's control queue is bound to (telemetry: a copy)."""
    channels = (*CONTROL_CHANNELS, *INGEST_CHANNELS)
    return [(topics.subscription(ch), 1) for ch in channels] + list(extra)


def control_handler(
    topics: Topics,
    handle: MessageHandler,
    observe: MessageHandler,
    count: Callable[[str, bytes], None] | None = None,
) -> MessageHandler:
    """Telemetry copies to `observe`; everything else (status, acks, claims) to `handle`,
    counted in the statistics first (`count`: `IngestService.count_control`)."""
    telemetry = "/" + Channel.TELEMETRY.value

    def route(topic: str, payload: bytes, retain: bool, ack: Callable[[], None]) -> None:
        if topic.endswith(telemetry) and topic.startswith(topics.prefix + "/"):
            observe(topic, payload, retain, ack)
        else:
            if count is not None:
                count(topic, payload)
            handle(topic, payload, retain, ack)

    return route


class Leadership:
    """Takes the lease when it can, then `promote()`; `on_lost()` if it is ever lost."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        promote: Callable[[], Awaitable[None]],
        on_lost: Callable[[], None],
    ) -> None:
        self._lease = PgLease(settings.store.url, name, every_s=min(settings.cluster.lease_s, 1.0))
        self._promote = promote
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self.held = False

    def start(self) -> None:
        """The lease loop, under the gateway's supervisor (restarted with backoff if it dies)."""
        self._task = spawn("cluster-lease", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._lease.release()

    async def _run(self) -> None:
        if self.held:
            # Restarted after a crash while holding: the single-owner services run already
            # (promoting again would start them twice); go back to watching the lease.
            log.warning("scale-out: watching the lease again after a restart of its loop")
        else:
            try:
                await self._lease.acquire()
            except Exception:
                await self._lease.release()  # the next run starts on a fresh connection
                raise
            self.held = True
            try:
                await self._promote()
            except Exception:
                log.exception("scale-out: taking over the single-owner services failed")
                self.held = False
                self._on_lost()
                return
            log.info("scale-out: this instance holds the lease (outbox, presence, rules)")
        try:
            await self._lease.lost()
        except Exception:  # cannot tell whether the lease still holds: as if lost
            log.exception("scale-out: watching the lease failed")
        self.held = False
        log.error("scale-out: the lease is lost; stopping this instance (restart it)")
        self._on_lost()


async def stop_instance(link: AmqpLink, ingest: IngestService) -> None:
    """The clean stop of one instance (SIGTERM, `planty run` stopping): nothing it stored is
    delivered again to another instance. In this order:
    1. stop taking deliveries (basic.cancel on every queue consumed; one already on its way
       stays unacked and goes to another instance when the channel closes);
    2. let the writer commit what it holds (`ingest.drain`), which acks each message;
    3. write every ack, then close the channel and the connection (`AmqpLink.close`).
    Before this, the link closed while acks were still queued in the client, and RabbitMQ
    handed those committed readings to another instance: stored twice."""
    await link.stop_consuming()
    await ingest.drain()
    await link.close()


async def refresh_registry(
    registry: DeviceRegistry, certificates: Callable[[], Awaitable[bool]] | None = None
) -> None:
    """Every instance: devices added or removed through another instance show up here, and
    the device certificates another instance issued, rotated or revoked (`certificates`:
    `CredentialService.reload_certificates`)."""
    while True:
        await asyncio.sleep(REGISTRY_EVERY_S)
        try:
            await registry.refresh()
            if certificates is not None:
                await certificates()
        except Exception as exc:
            log.warning("registry refresh failed (%s); retrying", exc)
