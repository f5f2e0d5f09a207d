"""Device credentials over their whole life: issue, rotate with overlap, revoke at once.

The MQTT server enforces; this service decides. Its state (the
`device_credentials` table, the devices' token hashes, revoked certificate
serials) is turned into Mosquitto's password file and CRL by `MqttControl.apply`
(rewrite + SIGHUP, coalesced), so every change takes effect in one reload.

Rotation (docs/security.md): the new credential goes to the device in a `config`
command on its `cmd` topic, re-sent until the device acks it. Mosquitto's
password file holds one hash per user, so a new *token* is accepted only from
the switch, which happens when the device confirms it stored the new one (its
ack) or, at the latest, when the overlap window ends; a new certificate (or a
token replacing a certificate) is valid at once, so the device holds both. The
old credential is refused from the switch on; sessions still using it are cut.

Revocation withdraws every credential of a device in one reload: a token session
is cut by the reload itself; a certificate session (Mosquitto never re-checks a
certificate) by a session takeover: the gateway logs in on the internal listener
with a one-time password under the device's name, which closes the device's
connection, then removes that password again. Queued commands are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from planty_broker.domain.identity import (
    CredentialEventKind,
    CredentialKind,
    CredentialOrigin,
    CredentialState,
    DeviceCredential,
)
from planty_broker.mqttserver.passwords import hash_token, new_token
from planty_broker.mqttserver.pki import Pki, cert_info, issue_client_cert
from planty_broker.protocol import (
    Channel,
    Command,
    CredentialDelivery,
    Topics,
    credential_config_args,
    encode,
)
from planty_broker.services.bus import AckReceived, Bus, DevicesChanged, DeviceStatusReceived
from planty_broker.services.credential_events import CredentialEvent, EventRecorder
from planty_broker.services.login_watch import LoginAccepted, LoginEvent, LoginRefused
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.storage.identity import IdentityStore

log = logging.getLogger(__name__)

DELIVERY_PREFIX = "cred-"
ATTRIBUTE_WINDOW_MS = (
    3600_000  # a refused login may be a device whose credential ended this recently
)
K = CredentialEventKind


class CredentialError(Exception):
    """Root of credential errors; the message is one line for the user."""


class CredentialUnavailableError(CredentialError):
    """The feature needs the supervised MQTT server (or its X.509 listener)."""


class NoLiveCredentialError(CredentialError):
    pass


@dataclass(slots=True)
class MqttControl:
    """How the service reaches the supervised Mosquitto (built by the composition root)."""

    apply: Callable[[], Awaitable[None]]  # write passwd/ACL/CRL from current state, reload
    kick: Callable[[str, str], Awaitable[int]]  # login (user, password) on the internal listener
    pki: Pki | None
    host: str
    token_port: int
    x509_port: int  # 0: no X.509 listener
    device_ports: frozenset[int]  # listeners devices use (token and X.509)


@dataclass(frozen=True, slots=True)
class Issued:
    """A credential just issued: its record and its secret parts (returned once)."""

    credential: DeviceCredential
    token: str | None = None
    cert_pem: str | None = None
    key_pem: str | None = None


@dataclass(slots=True)
class _Delivery:
    command_id: str
    payload: bytes
    next_send_ms: int


Publisher = Callable[[str, bytes], Awaitable[None]]


class CredentialService:
    """See the module docstring."""

    def __init__(
        self,
        store: IdentityStore,
        registry: DeviceRegistry,
        bus: Bus,
        recorder: EventRecorder,
        topics: Topics,
        *,
        overlap_s: float = 86400.0,
        delivery_retry_s: float = 10.0,
        cert_days: int = 825,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._registry = registry
        self._bus = bus
        self.events = recorder
        self._topics = topics
        self._overlap_ms = int(overlap_s * 1000)
        self._retry_ms = int(delivery_retry_s * 1000)
        self._cert_days = cert_days
        self._clock = clock
        self.control: MqttControl | None = None
        self.publish: Publisher | None = None
        self.cancel_commands: Callable[[str], Awaitable[int]] | None = None
        self.mark_revoked: Callable[[str], None] | None = None  # presence: offline (revoked)
        self.extra_users: list[Callable[[], Mapping[str, str]]] = []  # claim slots
        self._creds: dict[str, DeviceCredential] = {}
        self._deliveries: dict[str, _Delivery] = {}  # new credential id -> its config command
        self._overrides: dict[str, str] = {}  # username -> one-time hash (kicks)
        self._origin_hint: dict[str, CredentialOrigin] = {}
        self._last_login: dict[str, tuple[str, int]] = {}  # device -> (address, at)
        self._ended_at: dict[str, int] = {}  # device -> when one of its credentials last ended
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        bus.subscribe(DevicesChanged, self._on_devices_changed)
        bus.subscribe(DeviceStatusReceived, self._on_status)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        now = self._clock()
        for c in await self._store.list_credentials():
            if c.live or (c.kind is CredentialKind.X509 and (c.not_after_ms or 0) > now):
                self._creds[c.id] = c
        async with self._lock:
            for device in self._registry.all():
                await self._adopt_token(device.id)
            # A rotation's secret lives only in memory: after a restart it cannot be delivered,
            # so a rotation not yet switched ends and the old credential stays.
            for c in self._in_progress():
                await self._end(c, CredentialState.REVOKED, "undeliverable_after_restart")
            await self._apply()
        self._ticker = asyncio.create_task(self._tick_loop(), name="credentials-timer")

    async def stop(self) -> None:
        tasks = [t for t in (self._ticker, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._ticker = None

    # ------------------------------------------------------------ MQTT server view

    def mqtt_users(self) -> dict[str, str]:
        """username -> `$7$` hash for the password file: devices, claim slots, kicks."""
        users = self._registry.credentials()
        for extra in self.extra_users:
            users.update(extra())
        users.update(self._overrides)
        return users

    def revoked_serials(self) -> list[int]:
        """Serials of ended certificates that have not yet expired (the CRL)."""
        now = self._clock()
        return sorted(
            int(c.serial, 16)
            for c in self._creds.values()
            if c.kind is CredentialKind.X509
            and c.serial
            and not c.live
            and (c.not_after_ms or 0) > now
        )

    def credentials_of(self, device_id: str) -> list[DeviceCredential]:
        found = [c for c in self._creds.values() if c.device_id == device_id]
        return sorted(found, key=lambda c: (c.created_ms, c.id))

    async def history(self, device_id: str) -> list[DeviceCredential]:
        """Every credential the device ever had, ended ones included."""
        return await self._store.list_credentials(device_id)

    # ------------------------------------------------------------ issuing

    def expect_origin(self, device_id: str, origin: CredentialOrigin) -> None:
        """The next device added with this id got its token from `origin` (claim)."""
        self._origin_hint[device_id] = origin

    async def issue_certificate(
        self, device_id: str, origin: CredentialOrigin = CredentialOrigin.ISSUED
    ) -> Issued:
        """A client certificate for the device (CN = its id), valid at once."""
        self._registry.require(device_id)
        async with self._lock:
            issued = await self._new_certificate(device_id, origin, None, None)
            await self._activate(issued.credential)
        return issued

    async def _new_certificate(
        self, device_id: str, origin: CredentialOrigin, replaces: str | None, until: int | None
    ) -> Issued:
        control = self._require_control()
        if control.pki is None or not control.x509_port:
            raise CredentialUnavailableError(
                "X.509 device certificates need the X.509 listener: set mqtt.x509 = true"
            )
        cert_pem, key_pem = await asyncio.to_thread(
            issue_client_cert, control.pki, device_id, self._cert_days
        )
        info = cert_info(cert_pem)
        cred = DeviceCredential(
            id=_cred_id(),
            device_id=device_id,
            kind=CredentialKind.X509,
            state=CredentialState.PENDING,
            origin=origin,
            created_ms=self._clock(),
            serial=format(info.serial, "x"),
            fingerprint=info.fingerprint,
            not_after_ms=info.not_after_ms,
            replaces=replaces,
            overlap_until_ms=until,
        )
        await self._save(cred)
        await self._event(K.ISSUED, cred, kind=cred.kind.value, origin=origin.value)
        return Issued(cred, cert_pem=cert_pem, key_pem=key_pem)

    # ------------------------------------------------------------ rotation

    async def rotate(
        self, device_id: str, kind: CredentialKind | None = None, overlap_s: float | None = None
    ) -> Issued:
        """Issue a new credential and deliver it; the old one ends at the switch (see above)."""
        self._registry.require(device_id)
        async with self._lock:
            await self._adopt_token(device_id)
            for c in self._in_progress(device_id):  # superseded by this rotation
                self._deliveries.pop(c.id, None)
                await self._end(c, CredentialState.REVOKED, "superseded")
            active = [
                c for c in self.credentials_of(device_id) if c.state is CredentialState.ACTIVE
            ]
            if not active:
                raise NoLiveCredentialError(
                    f"device {device_id} has no working credential to rotate from; "
                    "issue one (POST /api/v1/devices/{id}/credentials) or re-register it"
                )
            kind = kind or active[-1].kind
            old = next((c for c in reversed(active) if c.kind is kind), active[-1])
            until = self._clock() + (
                self._overlap_ms if overlap_s is None else int(overlap_s * 1000)
            )
            if kind is CredentialKind.X509:
                issued = await self._new_certificate(
                    device_id, CredentialOrigin.ROTATION, old.id, until
                )
                await self._activate(issued.credential)  # valid at once: true overlap
                delivery = CredentialDelivery(
                    issued.credential.id,
                    "x509",
                    cert_pem=issued.cert_pem,
                    key_pem=issued.key_pem,
                    port=self._require_control().x509_port,
                )
            else:
                token = new_token()
                cred = DeviceCredential(
                    id=_cred_id(),
                    device_id=device_id,
                    kind=CredentialKind.TOKEN,
                    state=CredentialState.PENDING,
                    origin=CredentialOrigin.ROTATION,
                    created_ms=self._clock(),
                    secret_hash=hash_token(token),
                    replaces=old.id,
                    overlap_until_ms=until,
                )
                await self._save(cred)
                await self._event(K.ISSUED, cred, kind="token", origin="rotation")
                issued = Issued(cred, token=token)
                if old.kind is not CredentialKind.TOKEN:  # no token to displace: valid at once
                    await self._activate(cred)
                delivery = CredentialDelivery(
                    cred.id, "token", token=token, port=self._require_control().token_port
                )
            new = issued.credential
            command = Command(
                f"{DELIVERY_PREFIX}{new.id}",
                "config",
                credential_config_args(delivery),
                exp=until,
            )
            self._deliveries[new.id] = _Delivery(command.id, encode(command), 0)
        await self._deliver_due()
        log.info(
            "rotating %s credential %s of device %s to %s (overlap until %d)",
            old.kind.value,
            old.id,
            device_id,
            new.id,
            until,
            extra={"device_id": device_id},
        )
        return Issued(self._creds.get(new.id, new), issued.token, issued.cert_pem, issued.key_pem)

    async def handle_ack(self, event: AckReceived) -> bool:
        """A device's ack of a credential delivery; False if the ack is not ours."""
        if not event.command_id.startswith(DELIVERY_PREFIX):
            return False
        cred_id = event.command_id[len(DELIVERY_PREFIX) :]
        async with self._lock:
            new = self._creds.get(cred_id)
            if new is None or new.device_id != event.device_id or cred_id not in self._deliveries:
                return True  # a repeat of an ack already handled
            del self._deliveries[cred_id]
            if not event.ok:
                await self._event(K.DELIVERED, new, ok=False, error=event.error)
                await self._end(new, CredentialState.REVOKED, "refused_by_device")
                await self._apply()
                return True
            await self._event(K.DELIVERED, new, ok=True)
            await self._switch(new, confirmed=True)
        return True

    async def _switch(self, new: DeviceCredential, *, confirmed: bool) -> None:
        """The rotation's switch: the new credential is accepted, the old one refused."""
        old = self._creds.get(new.replaces or "")
        self._deliveries.pop(new.id, None)
        if new.state is CredentialState.PENDING:
            await self._activate(new, apply=False)
        kick = False
        if old is not None and old.live:
            await self._end(old, CredentialState.RETIRED, "rotated")
            await self._event(K.ROTATED, old, replaced_by=new.id, confirmed=confirmed)
            kick = old.kind is CredentialKind.X509
        if kick:
            await self._kick(new.device_id)
        else:
            await self._apply()

    # ------------------------------------------------------------ revocation

    async def revoke(self, device_id: str, reason: str = "revoked") -> list[DeviceCredential]:
        """Withdraw every credential of the device now; its live session is cut."""
        self._registry.require(device_id)
        async with self._lock:
            await self._adopt_token(device_id)
            ended = []
            for c in self.credentials_of(device_id):
                if c.live:
                    self._deliveries.pop(c.id, None)
                    ended.append(await self._end(c, CredentialState.REVOKED, reason))
            await self._set_token_hash(device_id, "")
            await self._kick(device_id)
            if self.mark_revoked is not None:
                self.mark_revoked(device_id)
            for c in ended:
                await self._event(K.REVOKED, c, reason=reason)
        cancelled = 0
        if self.cancel_commands is not None:
            try:
                cancelled = await self.cancel_commands(device_id)
            except Exception:
                log.exception("cancelling the queued commands of %s failed", device_id)
        log.info(
            "device %s revoked: %d credential(s) withdrawn, %d queued command(s) cancelled",
            device_id,
            len(ended),
            cancelled,
            extra={"device_id": device_id},
        )
        return ended

    # ------------------------------------------------------------ observed logins

    async def on_login(self, event: LoginEvent) -> None:
        """A login Mosquitto logged (login_watch): first use, or a refusal with its reason."""
        control = self.control
        port = event.listener_port
        if control is None or (port is not None and port not in control.device_ports):
            return  # the gateway's own listener: probes and kicks
        at = self._clock()
        if isinstance(event, LoginAccepted):
            if event.username not in self._registry:
                return
            self._last_login[event.username] = (event.address, at)
            kind = CredentialKind.X509 if port == control.x509_port else CredentialKind.TOKEN
            used = [
                c
                for c in self.credentials_of(event.username)
                if c.kind is kind and c.state is CredentialState.ACTIVE
            ]
            if len(used) == 1 and used[0].first_used_ms is None:
                async with self._lock:
                    cred = await self._save(dataclasses.replace(used[0], first_used_ms=at))
                await self._event(K.USED_FIRST, cred, address=event.address)
            return
        assert isinstance(event, LoginRefused)
        device = self._attribute(event.address, at)
        listener = "x509" if port == control.x509_port else "token" if port else None
        await self.events.record(
            CredentialEvent(
                K.LOGIN_REFUSED,
                device,
                at,
                data={"reason": event.reason, "address": event.address, "listener": listener},
            )
        )

    def _attribute(self, address: str | None, at: int) -> str | None:
        """The device a refused login most likely came from: one whose credential ended
        recently and that last logged in from this address; None when not exactly one."""
        if address is None:
            return None
        matches = [
            d
            for d, ended in self._ended_at.items()
            if at - ended < ATTRIBUTE_WINDOW_MS
            and self._last_login.get(d, ("", 0))[0] == address
            and not any(c.live for c in self.credentials_of(d))
        ]
        return matches[0] if len(matches) == 1 else None

    # ------------------------------------------------------------ internals

    def _in_progress(self, device_id: str | None = None) -> list[DeviceCredential]:
        """New credentials of rotations not yet switched (their old credential still live)."""
        out = []
        for c in list(self._creds.values()):
            if not c.live or c.replaces is None:
                continue
            if device_id is not None and c.device_id != device_id:
                continue
            old = self._creds.get(c.replaces)
            if old is not None and old.live:
                out.append(c)
        return out

    def _require_control(self) -> MqttControl:
        if self.control is None:
            raise CredentialUnavailableError(
                "device credentials are enforced by the supervised MQTT server; with mqtt.url "
                "set, manage them on your MQTT server"
            )
        return self.control

    async def _adopt_token(self, device_id: str) -> None:
        """Make the device's current token hash (from the registry) a tracked credential."""
        device = self._registry.get(device_id)
        if device is None or not device.token_hash:
            return
        if any(
            c.kind is CredentialKind.TOKEN and c.secret_hash == device.token_hash
            for c in self.credentials_of(device_id)
        ):
            return
        origin = self._origin_hint.pop(device_id, CredentialOrigin.OPERATOR)
        for c in self.credentials_of(device_id):  # a token replaced outside this service
            if c.kind is CredentialKind.TOKEN and c.state is CredentialState.ACTIVE:
                await self._end(c, CredentialState.RETIRED, "replaced")
        at = self._clock()
        cred = DeviceCredential(
            id=_cred_id(),
            device_id=device_id,
            kind=CredentialKind.TOKEN,
            state=CredentialState.ACTIVE,
            origin=origin,
            created_ms=at,
            secret_hash=device.token_hash,
            valid_from_ms=at,
        )
        await self._save(cred)
        await self._event(K.ISSUED, cred, kind="token", origin=origin.value)

    async def _activate(self, cred: DeviceCredential, *, apply: bool = True) -> None:
        cred = await self._save(
            dataclasses.replace(cred, state=CredentialState.ACTIVE, valid_from_ms=self._clock())
        )
        if cred.kind is CredentialKind.TOKEN:
            await self._set_token_hash(cred.device_id, cred.secret_hash)
            if apply:
                await self._apply()
        await self._event(K.ACTIVATED, cred, kind=cred.kind.value)

    async def _end(
        self, cred: DeviceCredential, state: CredentialState, reason: str
    ) -> DeviceCredential:
        cred = await self._save(
            dataclasses.replace(cred, state=state, ended_ms=self._clock(), end_reason=reason)
        )
        self._ended_at[cred.device_id] = self._clock()
        device = self._registry.get(cred.device_id)
        if cred.kind is CredentialKind.TOKEN and device and device.token_hash == cred.secret_hash:
            await self._set_token_hash(cred.device_id, "")
        return cred

    async def _save(self, cred: DeviceCredential) -> DeviceCredential:
        await self._store.save_credential(cred)
        if cred.live or cred.kind is CredentialKind.X509:  # ended certificates: for the CRL
            self._creds[cred.id] = cred
        else:
            self._creds.pop(cred.id, None)
        return cred

    async def _set_token_hash(self, device_id: str, token_hash: str) -> None:
        device = self._registry.get(device_id)
        if device is not None and device.token_hash != token_hash:
            await self._registry.update(device_id, token_hash=token_hash)

    async def _apply(self) -> None:
        if self.control is not None:
            await self.control.apply()

    async def _kick(self, device_id: str) -> None:
        """Cut every live session of the device: reload (token) and takeover (certificate)."""
        control = self.control
        if control is None:
            return
        secret = new_token()
        self._overrides[device_id] = hash_token(secret)
        try:
            await control.apply()  # token sessions end here; the CRL is re-read
            try:
                code = await control.kick(device_id, secret)
                if code != 0:
                    log.warning("kicking %s: login refused with code %d", device_id, code)
            except OSError as exc:
                log.warning("kicking %s failed: %s", device_id, exc)
        finally:
            del self._overrides[device_id]
            await control.apply()

    async def _event(
        self, what: CredentialEventKind, cred: DeviceCredential, /, **data: object
    ) -> None:
        await self.events.record(
            CredentialEvent(what, cred.device_id, self._clock(), cred.id, dict(data))
        )

    # ------------------------------------------------------------ deliveries and timers

    async def _deliver_due(self, device_id: str | None = None) -> None:
        publish = self.publish
        if publish is None:
            return
        now = self._clock()
        for cred_id, d in list(self._deliveries.items()):
            cred = self._creds.get(cred_id)
            if cred is None:
                self._deliveries.pop(cred_id, None)
                continue
            if device_id is not None and cred.device_id != device_id:
                continue
            if device_id is None and d.next_send_ms > now:
                continue
            d.next_send_ms = now + self._retry_ms
            try:
                await publish(self._topics.device(cred.device_id, Channel.CMD), d.payload)
            except Exception as exc:
                log.warning("sending credential %s failed: %s; retrying", cred_id, exc)

    async def _tick(self) -> None:
        now = self._clock()
        async with self._lock:
            for c in self._in_progress():
                if c.overlap_until_ms is not None and now >= c.overlap_until_ms:
                    await self._switch(c, confirmed=False)
        await self._deliver_due()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._tick()
            except Exception:
                log.exception("credential timer failed")

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_status(self, event: DeviceStatusReceived) -> None:
        if event.online and any(
            self._creds.get(cid, None) is not None and self._creds[cid].device_id == event.device_id
            for cid in self._deliveries
        ):
            self._spawn(self._deliver_due(event.device_id), "credential-delivery")

    def _on_devices_changed(self, event: DevicesChanged) -> None:
        if event.change == "added":
            self._spawn(self._locked(self._adopt_token, event.device_id), "credential-adopt")
        elif event.change == "removed":
            self._spawn(self._removed(event.device_id), "credential-removed")

    async def _locked(self, fn: Callable[[str], Awaitable[None]], device_id: str) -> None:
        async with self._lock:
            await fn(device_id)

    async def _removed(self, device_id: str) -> None:
        """A removed device's credentials end; its certificates go on the CRL."""
        async with self._lock:
            ended = [
                await self._end(c, CredentialState.REVOKED, "device_removed")
                for c in self.credentials_of(device_id)
                if c.live
            ]
            if any(c.kind is CredentialKind.X509 for c in ended):
                await self._kick(device_id)
        for c in ended:
            await self._event(K.REVOKED, c, reason="device_removed")


def _cred_id() -> str:
    return f"k-{secrets.token_hex(6)}"
