"""The composition root: `async with Gateway(settings): ...` brings the whole gateway up.

Start order: data folder and admin token -> store (migrated) -> registry ->
supervised Mosquitto (certs, config, credentials) -> services -> MQTT link ->
identity (its credential reload needs the link's session live) -> HTTP API.
Stop is the reverse, so nothing acknowledged is lost on the way down, except
that ingest is drained *before* the link closes: the last batches are committed
and their PUBACKs sent while the link is still up (else the MQTT server delivers
them again after the restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import ssl
import uuid
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from types import TracebackType
from urllib.parse import urlparse

import uvicorn

from planty_broker import __version__
from planty_broker.config import Settings
from planty_broker.errors import PlantyError, StoreError
from planty_broker.mqttserver.authority import MosquittoAuthority
from planty_broker.mqttserver.errors import MosquittoError
from planty_broker.mqttserver.layout import MosquittoLayout
from planty_broker.mqttserver.rabbit_authority import RabbitAuthority
from planty_broker.mqttserver.rabbit_mgmt import RabbitApiError
from planty_broker.mqttserver.supervisor import MosquittoSupervisor
from planty_broker.mqttserver.unmanaged import UnmanagedAuthority
from planty_broker.northbound.api.app import create_api
from planty_broker.northbound.api.auth import Authenticator, ensure_admin_token
from planty_broker.northbound.api.fastpath import CommandFastPath
from planty_broker.northbound.api.forward import LEADER_API_KEY
from planty_broker.northbound.api.tokens import token_lookup
from planty_broker.northbound.firestore.connector import FirestoreConnector
from planty_broker.ports.device_authority import DeviceAuthority, DeviceEndpoint
from planty_broker.ports.store import Store
from planty_broker.protocol import Channel, Topics
from planty_broker.scaleout import (
    Leadership,
    UnknownDeviceRefresh,
    cluster_authority,
    cluster_link,
    control_handler,
    control_subscriptions,
    refresh_registry,
    send_lease_owner,
    stop_instance,
)
from planty_broker.services.bus import Bus, ReadingObserved
from planty_broker.services.context import Services
from planty_broker.services.dead_letters import DeadLetterService
from planty_broker.services.health import HealthService
from planty_broker.services.history import HistoryService, policy_of
from planty_broker.services.identity import Identity
from planty_broker.services.ingest import IngestService
from planty_broker.services.presence import PresenceService
from planty_broker.services.queue import (
    start_commands,
    start_events,
    start_firmware,
    start_message_queue,
)
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.services.rules.service import start_rules
from planty_broker.services.stats.service import StatsService
from planty_broker.storage.backup import lock_data_dir
from planty_broker.storage.sql import SqlStore
from planty_broker.storage.sql_access import SqlAccessStore
from planty_broker.storage.sql_dead_letters import SqlDeadLetterStore
from planty_broker.storage.sql_identity import SqlIdentityStore
from planty_broker.tasks import (
    Supervisor,
    cancel_and_wait,
    current_supervisor,
    spawn,
    use_supervisor,
)
from planty_broker.transport.amqp import AmqpLink
from planty_broker.transport.mqtt import LinkConfig, MqttConnectError, MqttLink

log = logging.getLogger(__name__)

Announce = Callable[[str], None]


class StartupError(PlantyError):
    """The gateway cannot start; the message is one line saying what to do."""


def check_port_free(host: str, port: int, what: str, how: str) -> None:
    """Raise StartupError with one clear line if `port` is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"{what} {port} is already in use by another program; {how}"
                ) from exc
            raise StartupError(
                f"cannot listen on {host}:{port} for {what}: {exc.strerror}"
            ) from None


class ApiServerError(PlantyError, RuntimeError):
    """The HTTP server ended without being asked to (its supervised loop restarts it)."""


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    """The running gateway. Use as `async with Gateway(settings) as gw: await gw.wait_stopped()`."""

    def __init__(self, settings: Settings, announce: Announce | None = None) -> None:
        self.settings = settings
        self._announce = announce or (lambda line: log.info("%s", line))
        self._stack = AsyncExitStack()
        self._stopped = asyncio.Event()
        self.services: Services | None = None
        self.admin_token = ""
        self.api_url = ""
        self.authority: DeviceAuthority | None = None
        self.link: MqttLink | AmqpLink | None = None
        self.leadership: Leadership | None = None
        self.identity: Identity | None = None
        self.firestore: FirestoreConnector | None = None
        self._show_secrets = announce is not None  # the pairing code goes to a terminal, not a log
        self._api_server: uvicorn.Server | None = None
        self.supervisor_of_loops: Supervisor | None = None

    async def __aenter__(self) -> Gateway:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    @property
    def supervisor(self) -> MosquittoSupervisor | None:
        """The supervised Mosquitto; None with an external MQTT server."""
        authority = self.authority
        return authority.supervisor if isinstance(authority, MosquittoAuthority) else None

    def stop(self) -> None:
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # ------------------------------------------------------------ start-up

    async def _start(self) -> None:  # noqa: PLR0915 - the composition root: one step a line
        s = self.settings
        cluster = bool(s.cluster.engine)
        data_dir = s.data_dir
        try:
            data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create the data folder {data_dir}: {exc.strerror}") from exc
        lock = lock_data_dir(data_dir)
        if lock is None:
            raise StartupError(
                f"another gateway is running on the data folder {data_dir}; stop it, "
                "or give this one another --data-dir"
            )
        self._stack.callback(lock.close)
        check_port_free(
            s.api.host, s.api.port, "api.port", "pick another with --api-port or PLANTY_API_PORT"
        )
        self.admin_token, token_file = ensure_admin_token(data_dir, s.gateway.admin_token)
        self._token_file = token_file
        # Every long-running loop started from here on runs under this one supervisor.
        h = s.health
        loops = Supervisor(initial_s=h.restart_min_s, max_s=max(h.restart_max_s, h.restart_min_s))
        self.supervisor_of_loops = loops
        use_supervisor(loops)

        store = await self._open_store()
        bus = Bus()
        topics = Topics(s.mqtt.topic_prefix)
        authority = self.authority = self._authority()
        registry = DeviceRegistry(store, bus, authority.hash_secret)
        await registry.load()
        broker_id = await self._broker_id(store)
        self.identity = identity = Identity(
            store,
            registry,
            bus,
            s,
            topics,
            authority,
            SqlIdentityStore(store),
            SqlAccessStore(store),
        )
        try:
            await self._stack.enter_async_context(authority)
            if cluster:
                await identity.provisioning.refresh()  # an open claim window keeps its slots
                await authority.apply()  # the first apply syncs the cluster with the store
        except (MosquittoError, RabbitApiError) as exc:
            raise StartupError(str(exc)) from exc
        registry.credentials_hook = authority.apply
        presence = PresenceService(
            store,
            bus,
            registry,
            keepalive_s=s.mqtt.keepalive_s,
            default_interval_s=s.presence.default_interval_s,
            check_every_s=s.presence.check_every_s,
            max_pending=s.presence.max_pending,
        )
        # In a cluster the statistics run on the lease holder only (promote(), below): it alone
        # sees every message (the control queue), and one instance saves the snapshot.
        with_stats = s.stats.enabled and not cluster
        stats = StatsService(store, bus, registry, presence, s.stats) if with_stats else None
        dead_letters = DeadLetterService(
            SqlDeadLetterStore(store), bus, keep_days=s.store.dead_letters_keep_days
        )
        await dead_letters.start()
        presence.dead_letters = dead_letters
        ingest = IngestService(
            store,
            bus,
            registry,
            presence,
            topics,
            max_payload_bytes=s.mqtt.max_payload_bytes,
            batch_max=s.store.batch_max,
            batch_wait_ms=s.store.batch_wait_ms,
            stats=stats,
            dead_letters=dead_letters,
            max_pending_qos0=s.mqtt.max_pending_qos0,
        )
        svc = Services(
            settings=s,
            store=store,
            bus=bus,
            registry=registry,
            presence=presence,
            ingest=ingest,
            authority=authority,
            topics=topics,
            broker_id=broker_id,
            started_ms=now_ms(),
            stats=stats,
            dead_letters=dead_letters,
        )
        self.services = svc
        svc.health = HealthService(
            svc,
            loops,
            store_failing_s=s.health.store_failing_s,
            ingest_stuck_s=s.health.ingest_stuck_s,
        )

        if cluster:
            presence.recording = False  # until this instance holds the lease
        else:
            await presence.start()
            self._stack.push_async_callback(presence.stop)
        if stats is not None:
            await stats.start()
            self._stack.push_async_callback(stats.stop)
        await ingest.start()
        self._stack.push_async_callback(ingest.stop)
        dead_letters.prune_loop()
        self._stack.push_async_callback(dead_letters.stop)
        history = HistoryService(store, policy_of(s), every_s=s.store.housekeeping_every_s)
        svc.history = history
        if not cluster:  # in a cluster: housekeeping (rollups, pruning) on the lease holder
            await history.start()
            self._stack.push_async_callback(history.stop)
        if cluster:
            await self._start_cluster(svc, identity, ingest, presence)
            return
        commands, _events = await start_message_queue(svc, self._stack)
        firmware = await start_firmware(svc, commands, self._stack)
        await start_rules(svc, self._stack)  # needs only the store and the devices, no cloud

        subs = [
            (topics.subscription(ch), 1)
            for ch in (Channel.STATUS, Channel.TELEMETRY, Channel.ACK, Channel.OTA_ACK)
        ] + identity.subscriptions
        link = MqttLink(self._link_config(), subs, identity.route(ingest.handle))
        if self.supervisor is not None:  # the session is on disk before the next autosave
            link.on_subscribed = self.supervisor.save_persistence
        try:
            await link.connect()
        except MqttConnectError as exc:
            raise StartupError(str(exc)) from exc
        self.link = link
        svc.link = link
        commands.attach(link)
        firmware.attach(link)
        self._stack.push_async_callback(link.close)
        self._stack.push_async_callback(ingest.drain)  # unwinds first: flush, PUBACK, close
        # After the link is up: identity's start makes Mosquitto reload its credentials, and a
        # reload drops the gateway's session restored from mosquitto.db while it is offline
        # (it has no password in memory), with the messages queued for it since Mosquitto
        # came back (measured: 3 readings lost at a kill -9 of both in bench/soak.py).
        await identity.start(svc, self._stack)

        await self._start_api(svc)
        if self.settings.firestore.enabled:
            await self._start_firestore(svc)
        await self._announce_ready(svc)

    async def _start_cluster(
        self,
        svc: Services,
        identity: Identity,
        ingest: IngestService,
        presence: PresenceService,
    ) -> None:
        """Scale-out (scaleout.py): telemetry on every instance, the rest on the lease holder."""
        s = self.settings
        stack = self._stack
        await start_events(svc, stack)
        await identity.start(svc, stack)
        link = cluster_link(
            s, svc.topics, UnknownDeviceRefresh(svc.registry, svc.topics, ingest.handle)
        )
        try:
            await link.connect()
        except MqttConnectError as exc:
            raise StartupError(str(exc)) from exc
        self.link = link
        svc.link = link
        stack.push_async_callback(stop_instance, link, ingest)  # no delivery, commit, ack, close
        # device certificates on the cluster: re-read too (the whole credential table)
        certs = identity.credentials.reload_certificates if s.cluster.ca_key_file else None
        refresher = spawn("registry-refresh", lambda: refresh_registry(svc.registry, certs))
        stack.push_async_callback(cancel_and_wait, [refresher])

        svc.role = "worker"

        async def promote() -> None:
            await svc.registry.refresh()
            await self._lead_stats(svc, ingest, presence)  # before presence: it counts those
            presence.recording = True
            await presence.start()
            stack.push_async_callback(presence.stop)
            if svc.history is not None:
                await svc.history.start()
                stack.push_async_callback(svc.history.stop)
            commands = await start_commands(svc, stack, lease_owner=send_lease_owner())
            identity.attach_commands(svc)  # credential acks before the outbox's
            firmware = await start_firmware(svc, commands, stack)
            rules = await start_rules(svc, stack)
            if rules is not None:
                rules.engine.reading_event = ReadingObserved
                rules.engine.durable_fires = True
            commands.attach(link)
            firmware.attach(link)
            handler = control_handler(
                svc.topics,
                UnknownDeviceRefresh(svc.registry, svc.topics, identity.route(ingest.handle)),
                UnknownDeviceRefresh(svc.registry, svc.topics, ingest.observe),
                count=ingest.count_control,
            )
            subs = control_subscriptions(svc.topics, identity.subscriptions)
            await link.add_queue(s.cluster.queue + ".control", subs, handler)
            await svc.store.set_meta(LEADER_API_KEY, s.cluster.api_url or self._own_api_url())
            await self._watch_rabbit_events(svc)
            svc.role = "leader"
            # One connector for the cluster, on the lease holder: its event-log cursor
            # (`firestore`) and the log are in PostgreSQL, so it writes every instance's
            # readings once and a new holder goes on from the cursor the last one confirmed.
            # Stopped with the instance (the stack), which stops when the lease is lost.
            if s.firestore.enabled:
                await self._start_firestore(svc)

        name = f"planty-lease-{s.api.port}-{os.getpid()}"
        self.leadership = Leadership(s, name, promote, self.stop)
        self.leadership.start()
        stack.push_async_callback(self.leadership.stop)
        await self._start_api(svc)
        await self._announce_ready(svc)

    async def _watch_rabbit_events(self, svc: Services) -> None:
        """Scale-out, on the lease holder: RabbitMQ's events report logins (first use,
        refusals) and close a client id that is not its username, once for the cluster
        (rabbit_events.py). Returns once it watches (at most 10 s: it goes on connecting)."""
        if not isinstance(svc.authority, RabbitAuthority):
            return
        c = self.settings.cluster
        watch = svc.authority.event_watch(c.split(c.amqp_urls))
        await watch.start()
        self._stack.push_async_callback(watch.stop)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.connected.wait(), 10)

    async def _lead_stats(
        self, svc: Services, ingest: IngestService, presence: PresenceService
    ) -> None:
        """Scale-out: the statistics start on the instance that takes the lease, from the
        counters the last holder saved (`stats.snapshot_every_s`), counted from its control
        queue (`IngestService.count_copies`); the API of a worker forwards to it."""
        if not self.settings.stats.enabled:
            return
        stats = StatsService(svc.store, svc.bus, svc.registry, presence, self.settings.stats)
        await stats.start()
        self._stack.push_async_callback(stats.stop)
        svc.stats = stats
        ingest.count_copies(stats)

    async def _start_firestore(self, svc: Services) -> None:
        """The Firestore connector, last: a misconfiguration is one log line, never a stop."""
        connector = FirestoreConnector(svc)
        if await connector.start():
            self.firestore = connector
            self._stack.push_async_callback(connector.stop)

    async def _open_store(self) -> SqlStore:
        store = SqlStore(
            self.settings.store_url(),
            sqlite_synchronous=self.settings.store.sqlite_synchronous.upper(),
        )
        try:
            await store.open()
        except StoreError as exc:
            raise StartupError(f"store: {exc}") from exc
        self._stack.push_async_callback(store.close)
        return store

    async def _broker_id(self, store: Store) -> str:
        configured = self.settings.gateway.broker_id
        if configured:
            return configured
        existing = await store.get_meta("gateway.broker_id")
        if isinstance(existing, str) and existing:
            return existing
        new_id = f"broker-{uuid.uuid4().hex[:12]}"
        await store.set_meta("gateway.broker_id", new_id)
        return new_id

    def _authority(self) -> MosquittoAuthority | UnmanagedAuthority | RabbitAuthority:
        """The device authority: the supervised Mosquitto, or an external server's no-op."""
        s = self.settings
        if s.cluster.engine:
            return cluster_authority(s)
        if s.supervised_mqtt:
            return MosquittoAuthority(
                MosquittoLayout.from_settings(s), reload_interval_s=s.mqtt.reload_interval_s
            )
        u = urlparse(s.mqtt.url)
        tls = u.scheme == "mqtts"
        port = u.port or (8883 if tls else 1883)
        host = u.hostname or "localhost"
        log.warning(
            "mqtt.url is set: provision device credentials and ACLs on that server yourself"
        )
        return UnmanagedAuthority(DeviceEndpoint(s.mqtt.public_host or host, port, tls, None))

    def _link_config(self) -> LinkConfig:
        """The gateway's own MQTT connection: the internal listener of the supervised
        Mosquitto, or the external server of `mqtt.url`."""
        s = self.settings
        sup = self.supervisor
        if sup is not None:
            host, port = sup.internal_url
            return LinkConfig(
                host=host,
                port=port,
                client_id=sup.gateway_username,
                username=sup.gateway_username,
                password=sup.gateway_password,
                keepalive_s=s.mqtt.keepalive_s,
                max_inflight=s.mqtt.max_inflight,
            )
        u = urlparse(s.mqtt.url)
        tls = ssl.create_default_context() if u.scheme == "mqtts" else None
        return LinkConfig(
            host=u.hostname or "localhost",
            port=u.port or (8883 if tls else 1883),
            client_id=s.mqtt.client_id or "planty-gateway",
            username=s.mqtt.username,
            password=s.mqtt.password,
            tls=tls,
            keepalive_s=s.mqtt.keepalive_s,
            max_inflight=s.mqtt.max_inflight,
        )

    async def _start_api(self, svc: Services) -> None:
        s = self.settings
        authenticator = Authenticator(
            self.admin_token,
            max_failures=s.api.auth_max_failures,
            failure_window_s=s.api.auth_failure_window_s,
            max_clients=s.api.auth_clients_max,
        )
        if svc.tokens is not None:
            authenticator.lookups.append(token_lookup(svc.tokens))
        api = create_api(svc, authenticator)
        config = uvicorn.Config(
            # in front of FastAPI itself: the command endpoint's plain case skips all of its
            # layers (northbound/api/fastpath.py; it steps aside on a scale-out worker)
            CommandFastPath(api, svc, authenticator),
            host=s.api.host,
            port=s.api.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            limit_concurrency=s.api.max_connections,
        )
        stopping = False

        async def serve() -> None:
            """One run of the HTTP server; under the supervisor, which starts it again
            (with backoff, /readyz saying so) if it ends without being asked to."""
            server = _ApiServer(config)
            self._api_server = server
            try:
                await server.serve()
            except SystemExit:  # uvicorn's way of saying it could not start (e.g. bind)
                raise ApiServerError(f"could not listen on {s.api.host}:{s.api.port}") from None
            finally:  # ended some other way (cancelled): free the port for the next run
                for listener in getattr(server, "servers", ()):
                    listener.close()
                for connection in list(server.server_state.connections):
                    connection.shutdown()
            if not stopping:
                raise ApiServerError("the HTTP server stopped by itself")

        task = spawn("http-api", serve)
        loop_name = task.get_name().removeprefix("supervise-")
        while (server := self._api_server) is None or not server.started:
            state = current_supervisor().loops.get(loop_name)
            if task.done() or (state is not None and state.crashes):
                why = state.last_error if state is not None else "it ended"
                await cancel_and_wait([task])
                raise StartupError(f"HTTP API could not start on {s.api.host}:{s.api.port}: {why}")
            await asyncio.sleep(0.02)

        async def stop_api() -> None:
            nonlocal stopping
            stopping = True
            if self._api_server is not None:
                self._api_server.should_exit = True
            try:
                await asyncio.wait_for(task, 5)
            except Exception:  # the server did not finish in time: end it
                await cancel_and_wait([task])

        self._stack.push_async_callback(stop_api)
        self.api_url = self._own_api_url()

    def _own_api_url(self) -> str:
        s = self.settings
        host = s.api.host if s.api.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        return f"http://{host}:{s.api.port}"

    async def _announce_ready(self, svc: Services) -> None:
        s = self.settings
        say = self._announce
        say(f"Planty Broker {__version__} is running (broker id {svc.broker_id})")
        say(f"  data folder:   {s.data_dir}")
        say(f"  dashboard:     {self.api_url}/dashboard")
        say(f"  HTTP API:      {self.api_url}/api/v1   docs: {self.api_url}/docs")
        if self._token_file:
            say(f"  admin token:   in {self._token_file} (mode 0600)")
        else:
            say("  admin token:   from PLANTY_ADMIN_TOKEN")
        e = svc.endpoint
        say(
            f"  devices MQTT:  {'mqtts' if e.tls else 'mqtt'}://{e.host}:{e.port}"
            f"  ({len(svc.registry)} registered)"
        )
        if e.x509_port:
            say(f"  X.509 devices: mqtts://{e.host}:{e.x509_port}")
        if self.identity is not None:
            for line in await self.identity.announcement(show_code=self._show_secrets):
                say(line)
        firestore = self.firestore
        if firestore is not None:
            say(f"  firestore:     {firestore.describe()}")
        say("  stop with Ctrl+C")


def _after_start(slow_callback_ms: float = 0.0) -> None:
    """Once everything is up: what start-up allocated (modules, settings, the registry)
    moves to a permanent generation, so the collector no longer walks it in every full
    collection under load (those walks were part of the ingest latency tail, issue 17).
    `log.slow_callback_ms` > 0: asyncio's debug mode logs each callback that held the event
    loop longer (a profiling aid)."""
    gc.collect()
    gc.freeze()
    if slow_callback_ms > 0:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = slow_callback_ms / 1000


async def run_gateway(settings: Settings, announce: Announce | None = None) -> None:
    """`planty run`: start, wait for SIGINT/SIGTERM, stop cleanly.

    The handlers are in place before the start: the API answers (and an orchestrator may
    send SIGTERM) while the last parts still start, and a SIGTERM then killed the process
    with nothing flushed. A signal during the start now stops it cleanly once it is up."""
    gw = Gateway(settings, announce)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, gw.stop)
    async with gw:
        _after_start(settings.log.slow_callback_ms)
        await gw.wait_stopped()
        log.info("stopping")
