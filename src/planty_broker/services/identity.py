"""Compose device identity into a running gateway: API tokens, pairing, device credentials,
provisioning by claim and the login watch (issue 4; docs/security.md).

The composition root calls, in order: `Identity(...)` (before the MQTT server),
`mqtt_job()` / `attach_supervisor()` (while building it), `start()` (with the
other services, after the command outbox), `subscriptions` + `route()` (for the MQTT link).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from planty_broker.config import Settings
from planty_broker.domain.models import PresenceCause, PresenceState
from planty_broker.mqttserver.login_watch import LoginLogParser, LogTail
from planty_broker.mqttserver.probe import mqtt_connect
from planty_broker.protocol import Topics, provision_subscription
from planty_broker.services.access.pairing import PairingService
from planty_broker.services.access.tokens import TokenService
from planty_broker.services.bus import AckReceived, Bus
from planty_broker.services.context import Services
from planty_broker.services.credentials.events import EventRecorder, store_appender
from planty_broker.services.credentials.logins import LoginObserver
from planty_broker.services.credentials.provisioning import ProvisioningService
from planty_broker.services.credentials.service import CredentialService, MqttControl
from planty_broker.services.registry import DeviceRegistry
from planty_broker.services.registry import now_ms as _now_ms
from planty_broker.storage.sql_identity import SqlIdentityStore

log = logging.getLogger(__name__)

Ack = Callable[[], None]
MessageHandler = Callable[[str, bytes, bool, Ack], None]  # the MQTT link's handler
CLAIM_SECRET_FILE = "mqtt-claim.secret"  # noqa: S105 - a file name


class Identity:
    """The identity services of one gateway and their wiring."""

    def __init__(
        self, store: Any, registry: DeviceRegistry, bus: Bus, settings: Settings, topics: Topics
    ) -> None:
        self._settings = settings
        self._store = store
        self._topics = topics
        ident_store = SqlIdentityStore(store)
        p, v = settings.pairing, settings.provisioning
        self.recorder = EventRecorder(bus, store_appender(store))
        self.tokens = TokenService(ident_store, flush_every_s=p.token_last_used_flush_s)
        self.pairing = PairingService(
            ident_store,
            store,
            self.tokens,
            code_ttl_s=p.code_ttl_s,
            max_failures=p.max_failures,
            failure_window_s=p.failure_window_s,
        )
        self.credentials = CredentialService(
            ident_store,
            registry,
            bus,
            self.recorder,
            topics,
            overlap_s=v.rotation_overlap_s,
            delivery_retry_s=v.delivery_retry_s,
            cert_days=v.cert_days,
        )
        self.provisioning = ProvisioningService(
            self.credentials,
            registry,
            store,
            self.recorder,
            prefix=topics.prefix,
            slots=v.claim_slots,
            default_window_s=v.default_window_s,
            max_window_s=v.max_window_s,
            grace_s=v.claim_grace_s,
        )
        self.logins = LoginObserver(self.credentials)
        self._parser = LoginLogParser()
        self._tail: LogTail | None = None
        self._logins: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
        self._login_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the supervised MQTT server

    def mqtt_job(self, supervisor: Any) -> Callable[[], Awaitable[None]]:
        """The job that writes the current credentials (passwords, CRL) and reloads Mosquitto."""
        creds = self.credentials

        async def job() -> None:
            supervisor.set_revoked_serials(creds.revoked_serials())
            await supervisor.update_users(creds.mqtt_users())

        return job

    def attach_supervisor(self, supervisor: Any, apply: Callable[[], Awaitable[None]]) -> None:
        """Wire the running `MosquittoSupervisor`: enforcement, kicks, the claim secret."""
        from planty_broker.mqttserver.atomic import load_or_create_secret

        layout = supervisor.layout
        host, port = supervisor.internal_url

        async def kick(username: str, password: str) -> int:
            async with asyncio.timeout(5.0):
                return await mqtt_connect(host, port, username, password)

        device_ports = frozenset(
            p for p in (layout.port, layout.x509_port, layout.plaintext_loopback_port) if p
        )
        self.credentials.control = MqttControl(
            apply=apply,
            kick=kick,
            pki=supervisor.pki if layout.x509_port else None,
            host=supervisor.device_host,
            token_port=layout.port,
            x509_port=layout.x509_port,
            device_ports=device_ports,
        )
        prov = self.provisioning
        prov.set_claim_secret(load_or_create_secret(layout.data_dir / CLAIM_SECRET_FILE))
        prov.apply = apply
        prov.kick = kick
        prov.mqtt_endpoint = (supervisor.device_host, layout.port, layout.x509_port)
        self._tail = LogTail(layout.log_path, self._on_log_line)

    def _on_log_line(self, line: str) -> None:
        event = self._parser.feed(line)
        if event is not None:
            with contextlib.suppress(asyncio.QueueFull):  # a login storm: counts lost, no more
                self._logins.put_nowait(event)

    async def _login_loop(self) -> None:
        while True:
            event = await self._logins.get()
            try:
                await self.logins.on_login(event)
            except Exception:
                log.exception("handling a login event failed")

    def announcement(self, *, show_code: bool) -> list[str]:
        """Lines for `planty run`'s start-up message (the code only on a terminal)."""
        status = self.pairing.status()
        if status.pairing is not None:
            lines = [f"  pairing:       paired with account {status.pairing.account_id}"]
        elif show_code and status.code is not None:
            minutes = max(1, round((status.code.expires_ms - _now_ms()) / 60_000))
            lines = [
                f"  pairing code:  {status.code.display}  (single use, expires in {minutes} min;"
                " `planty pair` shows a fresh one)"
            ]
        else:
            lines = ["  pairing:       not paired; `planty pair` shows the pairing code"]
        until = self.provisioning.window_until_ms
        if until is not None:
            lines.append(f"  claim window:  open for {(until - _now_ms()) // 1000} s more")
        return lines

    # ------------------------------------------------------------ lifecycle

    async def start(self, svc: Services, stack: AsyncExitStack) -> None:
        """Start the services (after the store and registry, before the MQTT link)."""
        events = svc.extra.get("events")
        writer = getattr(events, "writer", None)
        if writer is not None:
            from planty_broker.domain.events import NewEvent

            async def append(rows: Sequence[tuple[int, str, str | None, dict[str, Any]]]) -> None:
                for at, kind, device, data in rows:
                    await writer.write(NewEvent(at, kind, device, data))

            self.recorder.appender = append
        svc.extra["identity"] = self
        self._attach(svc)
        for service in (self.tokens, self.pairing, self.credentials, self.provisioning):
            await service.start()
            stack.push_async_callback(service.stop)
        if self._tail is not None:
            self._login_task = asyncio.create_task(self._login_loop(), name="login-events")
            await self._tail.start()
            stack.push_async_callback(self._stop_watch)

    async def _stop_watch(self) -> None:
        if self._tail is not None:
            await self._tail.stop()
        if self._login_task is not None:
            self._login_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._login_task

    # ------------------------------------------------------------ the MQTT link

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        """What the gateway's link subscribes to for identity (claim requests)."""
        if self.credentials.control is None:
            return []
        return [(provision_subscription(self._topics.prefix), 1)]

    def route(self, handler: MessageHandler) -> MessageHandler:
        """The link's message handler: claim requests here, everything else to `handler`."""
        prov = self.provisioning

        def routed(topic: str, payload: bytes, retain: bool, ack: Ack) -> None:
            if prov.handles(topic):
                prov.handle(topic, payload)  # answered in its own task; nothing to make durable
                ack()
            else:
                handler(topic, payload, retain, ack)

        return routed

    def _attach(self, svc: Services) -> None:
        """Publish through the gateway's link (`svc.extra["link"]`, connected later); take
        credential acks before the command outbox does; cancel commands at revocation."""

        async def publish(topic: str, payload: bytes) -> None:
            link = svc.extra.get("link")
            if link is None or not link.connected:
                raise ConnectionError("the gateway's MQTT link is down")
            await link.publish(topic, payload, qos=1)

        self.credentials.publish = publish
        self.provisioning.publish = publish
        ingest = svc.ingest
        previous = ingest.ack_handler

        async def on_ack(event: AckReceived) -> None:
            if await self.credentials.handle_ack(event):
                return
            if previous is not None:
                await previous(event)

        ingest.ack_handler = on_ack
        commands = svc.extra.get("commands")
        if commands is not None:
            self.credentials.cancel_commands = _canceller(commands)
        presence = svc.presence
        self.credentials.mark_revoked = lambda device_id: presence.mark(
            device_id, PresenceState.OFFLINE, PresenceCause.REVOKED
        )


def _canceller(commands: Any) -> Callable[[str], Awaitable[int]]:
    """Cancel a device's queued commands (the outbox's own call if it has one)."""
    own = getattr(commands, "cancel_device", None)

    lister = getattr(commands, "find", None) or getattr(commands, "list", None)

    async def cancel(device_id: str) -> int:
        if own is not None:
            return int(await own(device_id, "device credentials revoked"))
        if lister is None:
            return 0
        count = 0
        for rec in await lister(device_id, ["queued"], 1000):
            try:
                await commands.cancel(rec.id)
                count += 1
            except Exception as exc:  # sent meanwhile: it fails or expires on its own
                log.debug("command %s not cancelled: %s", rec.id, exc)
        return count

    return cancel
