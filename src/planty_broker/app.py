"""The composition root: `async with Gateway(settings): ...` brings the whole gateway up.

Start order: data folder and admin token -> store (migrated) -> registry ->
supervised Mosquitto (certs, config, credentials) -> services -> MQTT link ->
HTTP API. Stop is the reverse, so nothing acknowledged is lost on the way down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import uvicorn

from planty_broker import __version__
from planty_broker.config import Settings
from planty_broker.mqttserver.passwords import hash_token
from planty_broker.northbound.api.app import create_api
from planty_broker.northbound.api.auth import Authenticator, ensure_admin_token
from planty_broker.ports.store import StoreError
from planty_broker.protocol import Channel, Topics
from planty_broker.services.bus import Bus
from planty_broker.services.context import DeviceEndpoint, Services
from planty_broker.services.identity import Identity
from planty_broker.services.ingest import IngestService
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.services.stats.service import StatsService
from planty_broker.transport.mqtt import LinkConfig, MqttConnectError, MqttLink

log = logging.getLogger(__name__)

Announce = Callable[[str], None]


class StartupError(Exception):
    """The gateway cannot start; the message is one line saying what to do."""


class Coalescer:
    """Run an async job; concurrent requests during a run share the next run."""

    def __init__(self, job: Callable[[], Awaitable[None]]) -> None:
        self._job = job
        self._lock = asyncio.Lock()
        self._started = 0
        self._completed = 0

    async def __call__(self) -> None:
        need = self._started + 1
        async with self._lock:
            if self._completed >= need:
                return
            self._started += 1
            await self._job()
            self._completed = self._started


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
                ) from None
            raise StartupError(
                f"cannot listen on {host}:{port} for {what}: {exc.strerror}"
            ) from None


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
        self.supervisor: Any = None
        self.link: MqttLink | None = None
        self.identity: Any = None  # services.identity.Identity
        self._show_secrets = announce is not None  # the pairing code goes to a terminal, not a log
        self._api_server: uvicorn.Server | None = None

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

    def stop(self) -> None:
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # ------------------------------------------------------------ start-up

    async def _start(self) -> None:  # noqa: PLR0915 - the composition root: one step a line
        s = self.settings
        data_dir = s.data_dir
        try:
            data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"cannot create the data folder {data_dir}: {exc.strerror}"
            ) from None
        check_port_free(
            s.api.host, s.api.port, "api.port", "pick another with --api-port or PLANTY_API_PORT"
        )
        self.admin_token, token_file = ensure_admin_token(data_dir, s.gateway.admin_token)
        self._token_file = token_file

        store = await self._open_store()
        bus = Bus()
        registry = DeviceRegistry(store, bus, hash_token)
        await registry.load()
        topics = Topics(s.mqtt.topic_prefix)
        broker_id = await self._broker_id(store)
        self.identity = identity = Identity(store, registry, bus, s, topics)

        endpoint, link_config = await self._mqtt_server(registry, broker_id)
        presence = PresenceService(
            store,
            bus,
            registry,
            keepalive_s=s.mqtt.keepalive_s,
            default_interval_s=s.presence.default_interval_s,
            check_every_s=s.presence.check_every_s,
        )
        stats = StatsService(store, bus, registry, presence, s.stats) if s.stats.enabled else None
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
        )
        svc = Services(
            settings=s,
            store=store,
            bus=bus,
            registry=registry,
            presence=presence,
            ingest=ingest,
            endpoint=endpoint,
            started_ms=now_ms(),
        )
        svc.extra["broker_id"] = broker_id
        svc.extra["topics"] = topics
        svc.extra["supervisor"] = self.supervisor  # None with an external MQTT server
        if stats is not None:
            svc.extra["stats"] = stats
            svc.extra["device_summary"] = stats.device_summary
        self.services = svc

        await presence.start()
        self._stack.push_async_callback(presence.stop)
        if stats is not None:
            await stats.start()
            self._stack.push_async_callback(stats.stop)
        await ingest.start()
        self._stack.push_async_callback(ingest.stop)
        from planty_broker.services.queue import start_message_queue

        commands, _events = await start_message_queue(svc, self._stack, topics)
        from planty_broker.services.rules.service import start_rules

        await start_rules(svc, self._stack)  # needs only the store and the devices, no cloud
        await identity.start(svc, self._stack)

        subs = [
            (topics.subscription(ch), 1) for ch in (Channel.STATUS, Channel.TELEMETRY, Channel.ACK)
        ] + identity.subscriptions
        link = MqttLink(link_config, subs, identity.route(ingest.handle))
        try:
            await link.connect()
        except MqttConnectError as exc:
            raise StartupError(str(exc)) from None
        self.link = link
        svc.extra["link"] = link
        commands.attach(link)
        self._stack.push_async_callback(link.close)

        await self._start_api(svc)
        if self.settings.firestore.enabled:
            await self._start_firestore(svc)
        self._announce_ready(svc)

    async def _start_firestore(self, svc: Services) -> None:
        """The Firestore connector, last: a misconfiguration is one log line, never a stop."""
        from planty_broker.northbound.firestore.connector import FirestoreConnector

        connector = FirestoreConnector(svc)
        if await connector.start():
            svc.extra["firestore"] = connector
            self._stack.push_async_callback(connector.stop)

    async def _open_store(self) -> Any:
        from planty_broker.storage.sql import SqlStore

        store = SqlStore(
            self.settings.store_url(),
            sqlite_synchronous=self.settings.store.sqlite_synchronous.upper(),
        )
        try:
            await store.open()
        except StoreError as exc:
            raise StartupError(f"store: {exc}") from None
        self._stack.push_async_callback(store.close)
        return store

    async def _broker_id(self, store: Any) -> str:
        configured = self.settings.gateway.broker_id
        if configured:
            return configured
        existing = await store.get_meta("gateway.broker_id")
        if isinstance(existing, str) and existing:
            return existing
        new_id = f"broker-{uuid.uuid4().hex[:12]}"
        await store.set_meta("gateway.broker_id", new_id)
        return new_id

    async def _mqtt_server(
        self, registry: DeviceRegistry, broker_id: str
    ) -> tuple[DeviceEndpoint, LinkConfig]:
        s = self.settings
        client_id = s.mqtt.client_id or "planty-gateway"
        if not s.supervised_mqtt:
            u = urlparse(s.mqtt.url)
            tls = ssl.create_default_context() if u.scheme == "mqtts" else None
            port = u.port or (8883 if tls else 1883)
            host = u.hostname or "localhost"
            log.warning(
                "mqtt.url is set: provision device credentials and ACLs on that server yourself"
            )
            endpoint = DeviceEndpoint(s.mqtt.public_host or host, port, tls is not None, None)
            cfg = LinkConfig(
                host=host,
                port=port,
                client_id=client_id,
                username=s.mqtt.username,
                password=s.mqtt.password,
                tls=tls,
                keepalive_s=s.mqtt.keepalive_s,
                max_inflight=s.mqtt.max_inflight,
            )
            return endpoint, cfg

        from planty_broker.mqttserver.errors import MosquittoError
        from planty_broker.mqttserver.layout import MosquittoLayout
        from planty_broker.mqttserver.supervisor import MosquittoSupervisor

        creds = self.identity.credentials

        async def users() -> dict[str, str]:
            found: dict[str, str] = creds.mqtt_users()
            return found

        async def revoked() -> list[int]:
            serials: list[int] = creds.revoked_serials()
            return serials

        try:
            sup = MosquittoSupervisor(
                MosquittoLayout.from_settings(s),
                users,
                extra_accounts=self.identity.provisioning.claim_accounts(),
                crl_provider=revoked,
            )
            await self._stack.enter_async_context(sup)
        except MosquittoError as exc:
            raise StartupError(str(exc)) from None
        self.supervisor = sup
        registry.credentials_hook = apply = Coalescer(self.identity.mqtt_job(sup))
        self.identity.attach_supervisor(sup, apply)
        endpoint = DeviceEndpoint(sup.device_host, sup.device_port, True, sup.ca_pem)
        host, port = sup.internal_url
        cfg = LinkConfig(
            host=host,
            port=port,
            client_id=sup.gateway_username,
            username=sup.gateway_username,
            password=sup.gateway_password,
            keepalive_s=s.mqtt.keepalive_s,
            max_inflight=s.mqtt.max_inflight,
        )
        return endpoint, cfg

    async def _start_api(self, svc: Services) -> None:
        s = self.settings
        authenticator = Authenticator(self.admin_token)
        from planty_broker.northbound.api.tokens import token_lookup

        authenticator.lookups.append(token_lookup(self.identity.tokens))
        svc.extra["authenticator"] = authenticator
        api = create_api(svc, authenticator)
        config = uvicorn.Config(
            api,
            host=s.api.host,
            port=s.api.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        server = _ApiServer(config)
        self._api_server = server
        task = asyncio.create_task(server.serve(), name="http-api")
        while not server.started:
            if task.done():
                exc = task.exception()
                raise StartupError(f"HTTP API could not start on {s.api.host}:{s.api.port}: {exc}")
            await asyncio.sleep(0.02)

        async def stop_api() -> None:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)

        self._stack.push_async_callback(stop_api)
        host = s.api.host if s.api.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        self.api_url = f"http://{host}:{s.api.port}"

    def _announce_ready(self, svc: Services) -> None:
        s = self.settings
        say = self._announce
        say(f"Planty Broker {__version__} is running (broker id {svc.extra['broker_id']})")
        say(f"  data folder:   {s.data_dir}")
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
        for line in self.identity.announcement(show_code=self._show_secrets):
            say(line)
        firestore = svc.extra.get("firestore")
        if firestore is not None:
            say(f"  firestore:     {firestore.describe()}")
        say("  stop with Ctrl+C")


async def run_gateway(settings: Settings, announce: Announce | None = None) -> None:
    """`planty run`: start, wait for SIGINT/SIGTERM, stop cleanly."""
    async with Gateway(settings, announce) as gw:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, gw.stop)
        await gw.wait_stopped()
        log.info("stopping")
