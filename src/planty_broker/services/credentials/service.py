"""Device credentials over their whole life: issue, rotate with overlap, revoke at once.

The MQTT server enforces; this service decides. Its state (the
`device_credentials` table, the devices' token verifiers, revoked certificate
serials) is the desired state (`desired()`) it hands to the device authority
(`ports.device_authority`); `authority.apply()` makes the server enforce it (on the
supervised Mosquitto: password file and CRL rewritten, one SIGHUP, coalesced).

Rotation (docs/security.md): the new credential goes to the device in a `config`
command on its `cmd` topic, re-sent until the device acks it. The MQTT server
holds one token verifier per user, so a new *token* is accepted only from
the switch, which happens when the device confirms it stored the new one (its
ack) or, at the latest, when the overlap window ends; a new certificate (or a
token replacing a certificate) is valid at once, so the device holds both. The
old credential is refused from the switch on; sessions still using it are cut.

Revocation withdraws every credential of a device at once and cuts its live
session (`authority.kick`: the server never re-checks a live session's
certificate). Queued commands are cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence

from planty_broker.domain.identity import (
    CredentialEventKind,
    CredentialKind,
    CredentialOrigin,
    CredentialState,
    DeviceCredential,
)
from planty_broker.errors import CredentialError
from planty_broker.ports.device_authority import (
    Account,
    AuthorityUnavailableError,
    DesiredAccess,
    DeviceAuthority,
)
from planty_broker.ports.store import IdentityStore
from planty_broker.protocol import Topics
from planty_broker.services.bus import Bus, DevicesChanged, DeviceStatusReceived
from planty_broker.services.credentials.events import CredentialEvent, EventRecorder
from planty_broker.services.credentials.rotation import DELIVERY_PREFIX, RotationMixin, _Delivery
from planty_broker.services.credentials.types import (
    CredentialUnavailableError,
    Issued,
    NoLiveCredentialError,
    new_cred_id,
)
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.tasks import cancel_and_wait, spawn

log = logging.getLogger(__name__)

K = CredentialEventKind


Publisher = Callable[[str, bytes], Awaitable[None]]


class CredentialService(RotationMixin):
    """See the module docstring."""

    def __init__(
        self,
        store: IdentityStore,
        registry: DeviceRegistry,
        bus: Bus,
        recorder: EventRecorder,
        topics: Topics,
        *,
        authority: DeviceAuthority,
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
        self.authority = authority
        self.publish: Publisher | None = None
        self.cancel_commands: Callable[[str], Awaitable[int]] | None = None
        self.mark_revoked: Callable[[str], None] | None = None  # presence: offline (revoked)
        self.extra_accounts: list[Callable[[], Sequence[Account]]] = []  # claim slots
        self._creds: dict[str, DeviceCredential] = {}
        self._by_device: dict[str, set[str]] = {}  # device -> ids in _creds
        self._replacing: set[str] = set()  # live credentials that replace another (rotations)
        self._deliveries: dict[str, _Delivery] = {}  # new credential id -> its config command
        self._origin_hint: dict[str, CredentialOrigin] = {}
        self.ended_at: dict[str, int] = {}  # device -> when one of its credentials last ended
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._to_adopt: list[str] = []  # devices added, their tokens not tracked yet
        self._adopting = False
        self._adopter: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        authority.set_source(self.desired)
        bus.subscribe(DevicesChanged, self._on_devices_changed)
        bus.subscribe(DeviceStatusReceived, self._on_status)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        now = self._clock()
        ended: set[tuple[str, str]] = set()
        for c in await self._store.list_credentials():
            if c.live or (c.kind is CredentialKind.X509 and (c.not_after_ms or 0) > now):
                self._keep(c)
            elif c.kind is CredentialKind.TOKEN and c.secret_hash:
                device = self._registry.get(c.device_id)
                if device is not None and c.created_ms >= device.created_at_ms:
                    ended.add((c.device_id, c.secret_hash))
        async with self._lock:
            await self._refuse_ended(ended)
            await self._adopt_existing()
            # A rotation's secret lives only in memory: after a restart it cannot be delivered,
            # so a rotation not yet switched ends and the old credential stays.
            for c in self._in_progress():
                await self._end(c, CredentialState.REVOKED, "undeliverable_after_restart")
            await self._apply()
        self._ticker = spawn("credentials-timer", self._tick_loop)

    async def stop(self) -> None:
        await cancel_and_wait(t for t in (self._ticker, *self._tasks) if t is not None)
        self._ticker = None

    # ------------------------------------------------------------ MQTT server view

    def desired(self) -> DesiredAccess:
        """What the MQTT server must enforce now: device tokens, claim slots, the CRL."""
        accounts = tuple(a for extra in self.extra_accounts for a in extra())
        return DesiredAccess(
            self._registry.credentials(),
            accounts,
            frozenset(self.revoked_serials()),
            frozenset(
                c.device_id
                for c in self._creds.values()
                if c.kind is CredentialKind.X509 and c.live and c.device_id in self._registry
            ),
        )

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

    async def reload_certificates(self) -> bool:
        """Re-read the certificates from the store (scale-out: another instance issued,
        rotated or revoked some), so this instance's desired state (certificate devices, the
        CRL) is the fleet's, not what it saw at its start. True when something changed."""
        now = self._clock()
        fresh = {
            c.id: c
            for c in await self._store.list_credentials()
            if c.kind is CredentialKind.X509 and (c.live or (c.not_after_ms or 0) > now)
        }
        async with self._lock:
            mine = {i: c for i, c in self._creds.items() if c.kind is CredentialKind.X509}
            if mine == fresh:
                return False
            for cred_id in mine.keys() - fresh.keys():  # expired: not live, not on the CRL
                del self._creds[cred_id]
                self._replacing.discard(cred_id)
                ids = self._by_device.get(mine[cred_id].device_id)
                if ids is not None:
                    ids.discard(cred_id)
                    if not ids:
                        del self._by_device[mine[cred_id].device_id]
            for c in fresh.values():
                if mine.get(c.id) != c:
                    self._keep(c)
            return True

    def known_device(self, device_id: str) -> bool:
        return device_id in self._registry

    def credentials_of(self, device_id: str) -> list[DeviceCredential]:
        """The device's live credentials and its ended, unexpired certificates, oldest first."""
        found = [self._creds[i] for i in self._by_device.get(device_id, ())]
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
        self._require_managed()
        try:
            info = await self.authority.issue_certificate(device_id, self._cert_days)
        except AuthorityUnavailableError as exc:
            raise CredentialUnavailableError(str(exc)) from exc
        cred = DeviceCredential(
            id=new_cred_id(),
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
        return Issued(cred, cert_pem=info.cert_pem, key_pem=info.key_pem)

    # ------------------------------------------------------------ revocation

    async def revoke(self, device_id: str, reason: str = "revoked") -> list[DeviceCredential]:
        """Withdraw every credential of the device now; its live session is cut."""
        self._registry.require(device_id)
        self._require_managed()
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

    async def mark_first_uses(self, uses: Sequence[tuple[DeviceCredential, int, str]]) -> None:
        """First logins of many credentials, written in one transaction and one event-log
        append (a fleet logging in after a restart or an import: one commit, not one per
        device). A credential already used, ended meanwhile or named twice keeps its first
        use."""
        async with self._lock:
            fresh: dict[str, tuple[DeviceCredential, str]] = {}
            for cred, at_ms, address in uses:
                current = self._creds.get(cred.id)
                if current is None or current.first_used_ms is not None or cred.id in fresh:
                    continue
                fresh[cred.id] = (dataclasses.replace(current, first_used_ms=at_ms), address)
            if not fresh:
                return
            await self._store.mark_credentials_used(
                {cid: c.first_used_ms or 0 for cid, (c, _a) in fresh.items()}
            )
            for c, _a in fresh.values():
                self._keep(c)
        await self.events.record_many(
            [
                CredentialEvent(K.USED_FIRST, c.device_id, self._clock(), c.id, {"address": a})
                for c, a in fresh.values()
            ]
        )

    # ------------------------------------------------------------ internals

    def _in_progress(self, device_id: str | None = None) -> list[DeviceCredential]:
        """New credentials of rotations not yet switched (their old credential still live)."""
        out = []
        for cred_id in sorted(self._replacing):
            c = self._creds[cred_id]
            if device_id is not None and c.device_id != device_id:
                continue
            old = self._creds.get(c.replaces or "")
            if old is not None and old.live:
                out.append(c)
        return out

    def _require_managed(self) -> None:
        if not self.authority.managed:
            raise CredentialUnavailableError(
                "device credentials are enforced by the supervised MQTT server; with mqtt.url "
                "set, manage them on your MQTT server"
            )

    async def _refuse_ended(self, ended: set[tuple[str, str]]) -> None:
        """A device row that holds the hash of one of its own ended tokens (revoked, retired,
        superseded) is cleared, never adopted as a new credential: an ended credential does not
        come back (issue 13). Such a row was left by a lost update (a status written over a
        credential change, fixed since), an older gateway sharing the store, or a restored
        backup; the device must get a new credential."""
        for device in self._registry.all():
            if device.token_hash and (device.id, device.token_hash) in ended:
                log.warning(
                    "device %s: its stored token was revoked or replaced before; refusing it "
                    "(issue or rotate a new credential for this device)",
                    device.id,
                    extra={"device_id": device.id},
                )
                await self._registry.update(device.id, token_hash="")

    async def _adopt_existing(self) -> None:
        """Devices registered before credentials were tracked (an upgrade): one row each for
        their current token, written in one transaction, dated at their registration."""
        rows = []
        for device in self._registry.all():
            has_token = any(c.kind is CredentialKind.TOKEN for c in self.credentials_of(device.id))
            if device.token_hash and not has_token:
                rows.append(
                    DeviceCredential(
                        id=new_cred_id(),
                        device_id=device.id,
                        kind=CredentialKind.TOKEN,
                        state=CredentialState.ACTIVE,
                        origin=CredentialOrigin.OPERATOR,
                        created_ms=device.created_at_ms,
                        secret_hash=device.token_hash,
                        valid_from_ms=device.created_at_ms,
                    )
                )
        if rows:
            await self._store.save_credentials(rows)
            for row in rows:
                self._keep(row)
            log.info("tracking the credentials of %d existing devices", len(rows))
        for device in self._registry.all():  # tokens changed outside this service, if any
            await self._adopt_token(device.id)

    async def _adopt_token(self, device_id: str) -> None:
        """Make the device's current token hash (from the registry) a tracked credential."""
        cred = await self._token_to_adopt(device_id)
        if cred is not None:
            await self._save(cred)
            await self._event(K.ISSUED, cred, kind="token", origin=cred.origin.value)

    async def adopted(self) -> None:
        """Return once the tokens of every device added so far are tracked."""
        while self._adopter is not None and not self._adopter.done():
            await asyncio.shield(self._adopter)

    async def _adopt_added(self) -> None:
        """Devices just added, tracked in batches: one store write and one event-log write
        per 1,000 (a bulk import of 10,000 is not 20,000 transactions)."""
        try:
            await self._adopt_batches()
        finally:
            self._adopting = False

    async def _adopt_batches(self) -> None:
        while self._to_adopt:
            batch = list(dict.fromkeys(self._to_adopt[:1000]))
            del self._to_adopt[:1000]
            async with self._lock:
                found = [await self._token_to_adopt(device_id) for device_id in batch]
                new = [c for c in found if c is not None]
                if not new:
                    continue
                await self._store.save_credentials(new)
                for cred in new:
                    self._keep(cred)
                await self.events.record_many(
                    [
                        CredentialEvent(
                            K.ISSUED,
                            c.device_id,
                            self._clock(),
                            c.id,
                            {"kind": "token", "origin": c.origin.value},
                        )
                        for c in new
                    ]
                )

    async def _token_to_adopt(self, device_id: str) -> DeviceCredential | None:
        """The credential to track for the device's current token (not saved yet), if any;
        an active token it replaces ends here."""
        device = self._registry.get(device_id)
        if device is None or not device.token_hash:
            return None
        if any(
            c.kind is CredentialKind.TOKEN and c.secret_hash == device.token_hash
            for c in self.credentials_of(device_id)
        ):
            return None
        origin = self._origin_hint.pop(device_id, CredentialOrigin.OPERATOR)
        for c in self.credentials_of(device_id):  # a token replaced outside this service
            if c.kind is CredentialKind.TOKEN and c.state is CredentialState.ACTIVE:
                await self._end(c, CredentialState.RETIRED, "replaced")
        at = self._clock()
        return DeviceCredential(
            id=new_cred_id(),
            device_id=device_id,
            kind=CredentialKind.TOKEN,
            state=CredentialState.ACTIVE,
            origin=origin,
            created_ms=at,
            secret_hash=device.token_hash,
            valid_from_ms=at,
        )

    async def _activate(self, cred: DeviceCredential, *, apply: bool = True) -> None:
        cred = await self._save(
            dataclasses.replace(cred, state=CredentialState.ACTIVE, valid_from_ms=self._clock())
        )
        if cred.kind is CredentialKind.TOKEN:
            await self._set_token_hash(cred.device_id, cred.secret_hash)
            if apply:
                await self._apply()
        elif apply and getattr(self.authority, "certificate_accounts", False):
            await self._apply()  # its server wants an account for a certificate (RabbitMQ)
        await self._event(K.ACTIVATED, cred, kind=cred.kind.value)

    async def _end(
        self, cred: DeviceCredential, state: CredentialState, reason: str
    ) -> DeviceCredential:
        cred = await self._save(
            dataclasses.replace(cred, state=state, ended_ms=self._clock(), end_reason=reason)
        )
        self.ended_at[cred.device_id] = self._clock()
        device = self._registry.get(cred.device_id)
        if cred.kind is CredentialKind.TOKEN and device and device.token_hash == cred.secret_hash:
            await self._set_token_hash(cred.device_id, "")
        return cred

    async def _save(self, cred: DeviceCredential) -> DeviceCredential:
        await self._store.save_credential(cred)
        self._keep(cred)
        return cred

    def _keep(self, cred: DeviceCredential) -> None:
        """Index a credential in memory: live ones, and ended certificates (for the CRL)."""
        if cred.live or cred.kind is CredentialKind.X509:
            self._creds[cred.id] = cred
            self._by_device.setdefault(cred.device_id, set()).add(cred.id)
        else:
            self._creds.pop(cred.id, None)
            ids = self._by_device.get(cred.device_id)
            if ids is not None:
                ids.discard(cred.id)
                if not ids:
                    del self._by_device[cred.device_id]
        if cred.live and cred.replaces is not None:
            self._replacing.add(cred.id)
        else:
            self._replacing.discard(cred.id)

    async def _set_token_hash(self, device_id: str, token_hash: str) -> None:
        device = self._registry.get(device_id)
        if device is not None and device.token_hash != token_hash:
            await self._registry.update(device_id, token_hash=token_hash)

    async def _apply(self) -> None:
        await self.authority.apply()

    async def _kick(self, device_id: str) -> None:
        """Cut every live session of the device, under the current desired state."""
        await self.authority.kick(device_id)

    async def _event(
        self, what: CredentialEventKind, cred: DeviceCredential, /, **data: object
    ) -> None:
        await self.events.record(
            CredentialEvent(what, cred.device_id, self._clock(), cred.id, dict(data))
        )

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_devices_changed(self, event: DevicesChanged) -> None:
        if event.change == "added":
            self._to_adopt.append(event.device_id)
            if not self._adopting:
                self._adopting = True
                task = asyncio.ensure_future(self._adopt_added())
                task.set_name("credential-adopt")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                self._adopter = task
        elif event.change == "removed":
            self._spawn(self._removed(event.device_id), "credential-removed")

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


__all__ = [
    "DELIVERY_PREFIX",
    "CredentialError",
    "CredentialService",
    "CredentialUnavailableError",
    "Issued",
    "NoLiveCredentialError",
]
