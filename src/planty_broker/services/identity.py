"""Compose device identity into a running gateway: API tokens, pairing, device credentials,
provisioning by claim and the login watch (issue 4; docs/security.md).

The composition root calls, in order: `Identity(...)` (before the device authority
starts: it registers the desired state and the login watch there), `start()` (with the
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
from planty_broker.domain.events import NewEvent
from planty_broker.domain.models import PresenceCause, PresenceState
from planty_broker.errors import PlantyError
from planty_broker.ports.device_authority import DeviceAuthority, LoginEvent
from planty_broker.ports.store import AccessStateStore, IdentityStore, Store
from planty_broker.protocol import Topics, provision_subscription
from planty_broker.services.access.audit import AuditLog
from planty_broker.services.access.pairing import PairingService
from planty_broker.services.access.tokens import TokenService
from planty_broker.services.bus import AckReceived, Bus
from planty_broker.services.commands.service import CommandService
from planty_broker.services.context import Services
from planty_broker.services.credentials.events import EventRecorder, store_appender
from planty_broker.services.credentials.logins import LoginObserver
from planty_broker.services.credentials.provisioning import ProvisioningService
from planty_broker.services.credentials.service import CredentialService
from planty_broker.services.registry import DeviceRegistry
from planty_broker.services.registry import now_ms as _now_ms
from planty_broker.tasks import spawn

log = logging.getLogger(__name__)
LOGIN_BATCH = 500  # login events handled in one go (one transaction for their first uses)

Ack = Callable[[], None]
MessageHandler = Callable[[str, bytes, bool, Ack], None]  # the MQTT link's handler


class Identity:
    """The identity services of one gateway and their wiring."""

    def __init__(
        self,
        store: Store,
        registry: DeviceRegistry,
        bus: Bus,
        settings: Settings,
        topics: Topics,
        authority: DeviceAuthority,
        ident_store: IdentityStore,
        shared: AccessStateStore,
    ) -> None:
        self._settings = settings
        self._store = store
        self._topics = topics
        self._authority = authority
        p, v = settings.pairing, settings.provisioning
        self.recorder = EventRecorder(bus, store_appender(store))
        self.audit = AuditLog(_single(store_appender(store)))
        self.tokens = TokenService(ident_store, flush_every_s=p.token_last_used_flush_s)
        self.pairing = PairingService(
            ident_store,
            shared,
            self.tokens,
            code_ttl_s=p.code_ttl_s,
            max_failures=p.max_failures,
            failure_window_s=p.failure_window_s,
            max_account_failures=p.max_account_failures,
            max_clients=p.clients_max,
        )
        self.pairing.audit = self.audit
        self.credentials = CredentialService(
            ident_store,
            registry,
            bus,
            self.recorder,
            topics,
            authority=authority,
            overlap_s=v.rotation_overlap_s,
            delivery_retry_s=v.delivery_retry_s,
            cert_days=v.cert_days,
        )
        self.provisioning = ProvisioningService(
            self.credentials,
            registry,
            shared,
            self.recorder,
            authority=authority,
            prefix=topics.prefix,
            slots=v.claim_slots,
            default_window_s=v.default_window_s,
            max_window_s=v.max_window_s,
            grace_s=v.claim_grace_s,
            max_claims=v.max_claims_per_window,
            claims_per_s=v.claims_per_s,
            meta=store,
        )
        self.logins = LoginObserver(self.credentials)
        self._logins: asyncio.Queue[LoginEvent] = asyncio.Queue(maxsize=10_000)
        self.logins_dropped = 0  # login events lost to a full queue (logged)
        self._login_task: asyncio.Task[None] | None = None
        authority.watch_logins(self._on_login)

    def _on_login(self, event: LoginEvent) -> None:
        try:
            self._logins.put_nowait(event)
        except asyncio.QueueFull:  # a login storm: the event is lost, and counted
            self.logins_dropped += 1
            if self.logins_dropped % 1000 == 1:
                log.warning("login events dropped (queue full): %d so far", self.logins_dropped)

    async def _login_loop(self) -> None:
        """Handles what queued meanwhile at once, up to LOGIN_BATCH events: a fleet logging in
        marks its first uses in a few transactions, not one per device."""
        while True:
            events = [await self._logins.get()]
            while len(events) < LOGIN_BATCH and not self._logins.empty():
                events.append(self._logins.get_nowait())
            try:
                await self.logins.on_logins(events)
            except Exception:
                log.exception("handling %d login event(s) failed", len(events))

    async def announcement(self, *, show_code: bool) -> list[str]:
        """Lines for `planty run`'s start-up message (the code only on a terminal)."""
        code = await self.pairing.current_code() if show_code else None
        pairing = self.pairing.pairing
        if pairing is not None:
            lines = [f"  pairing:       paired with account {pairing.account_id}"]
        elif code is not None:
            minutes = max(1, round((code.expires_ms - _now_ms()) / 60_000))
            lines = [
                f"  pairing code:  {code.display}  (single use, expires in {minutes} min;"
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
        writer = svc.events.writer if svc.events is not None else None
        if writer is not None:

            async def append(rows: Sequence[tuple[int, str, str | None, dict[str, Any]]]) -> None:
                # in shared batches: 1,000 events awaited one by one were 1,000 commits (~6 s)
                await writer.write_many([NewEvent(*row) for row in rows])

            self.recorder.appender = append
            self.audit.append = writer.write
        svc.tokens, svc.pairing, svc.audit = self.tokens, self.pairing, self.audit
        svc.credentials, svc.provisioning = self.credentials, self.provisioning
        self._attach(svc)
        for service in (self.tokens, self.pairing, self.credentials, self.provisioning):
            await service.start()
            stack.push_async_callback(service.stop)
        self._login_task = spawn("login-events", self._login_loop)
        stack.push_async_callback(self._stop_watch)

    async def _stop_watch(self) -> None:
        if self._login_task is not None:
            self._login_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._login_task

    # ------------------------------------------------------------ the MQTT link

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        """What the gateway's link subscribes to for identity (claim requests)."""
        if self._authority.claim_secret is None:
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
        """Publish through the gateway's link (`svc.link`, connected later); take
        credential acks before the command outbox does; cancel commands at revocation."""

        async def publish(topic: str, payload: bytes) -> None:
            link = svc.link
            if link is None or not link.connected:
                raise ConnectionError("the gateway's MQTT link is down")
            await link.publish(topic, payload, qos=1)

        self.credentials.publish = publish
        self.provisioning.publish = publish
        self.attach_commands(svc)
        presence = svc.presence
        self.credentials.mark_revoked = lambda device_id: presence.mark(
            device_id, PresenceState.OFFLINE, PresenceCause.REVOKED
        )

    def attach_commands(self, svc: Services) -> None:
        """Take credential acks before the command outbox does (a rotation's delivery is
        acked on the ack topic), and cancel queued commands at revocation. A cluster
        instance calls it again when it takes the lease: its command service starts then
        and installs its own ack handler, which would otherwise take the credential acks
        too ("unknown command id") and no rotation would switch on the cluster."""
        ingest = svc.ingest
        previous = ingest.ack_handler

        async def on_ack(event: AckReceived) -> None:
            if await self.credentials.handle_ack(event):
                return
            if previous is not None:
                await previous(event)

        ingest.ack_handler = on_ack
        commands = svc.commands
        if commands is not None:
            self.credentials.cancel_commands = _canceller(commands)


def _single(
    appender: Callable[[Sequence[tuple[int, str, str | None, dict[str, Any]]]], Awaitable[None]]
    | None,
) -> Callable[[NewEvent], Awaitable[None]] | None:
    """One event at a time over a row appender (the store's, before the event log runs)."""
    if appender is None:
        return None

    async def append(event: NewEvent) -> None:
        await appender([(event.at_ms, event.type, event.device_id, event.data)])

    return append


def _canceller(commands: CommandService) -> Callable[[str], Awaitable[int]]:
    """Cancel a device's queued commands (one sent meanwhile fails or expires on its own)."""

    async def cancel(device_id: str) -> int:
        count = 0
        for rec in await commands.find(device_id, ["queued"], 1000):
            try:
                await commands.cancel(rec.id)
                count += 1
            except PlantyError as exc:  # sent meanwhile: it fails or expires on its own
                log.debug("command %s not cancelled: %s", rec.id, exc)
        return count

    return cancel
