"""Rotation with overlap (mixed into `CredentialService`; the module docstring of
`services/credentials.py` and docs/security.md explain the switch).

The new credential travels in a `config` command on the device's `cmd` topic,
re-sent every `delivery_retry_s` (at once when the device comes online) until
the device acks it; the ack (or the end of the overlap) is the switch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from planty_broker.domain.identity import (
    CredentialEventKind,
    CredentialKind,
    CredentialOrigin,
    CredentialState,
    DeviceCredential,
)
from planty_broker.protocol import (
    Channel,
    Command,
    CredentialDelivery,
    Topics,
    credential_config_args,
    encode,
)
from planty_broker.services.bus import AckReceived, DeviceStatusReceived
from planty_broker.services.credentials.types import (
    Issued,
    NoLiveCredentialError,
    new_cred_id,
)
from planty_broker.services.registry import new_token

if TYPE_CHECKING:
    from planty_broker.ports.device_authority import DeviceAuthority
    from planty_broker.services.registry import DeviceRegistry

log = logging.getLogger("planty_broker.services.credentials")

DELIVERY_PREFIX = "cred-"
K = CredentialEventKind


@dataclass(slots=True)
class _Delivery:
    command_id: str
    payload: bytes
    next_send_ms: int


class RotationMixin:
    """`rotate`, the delivery of the new credential, the switch and the overlap timer."""

    if TYPE_CHECKING:
        _lock: asyncio.Lock
        _creds: dict[str, DeviceCredential]
        _deliveries: dict[str, _Delivery]
        _registry: DeviceRegistry
        _topics: Topics
        _clock: Callable[[], int]
        _overlap_ms: int
        _retry_ms: int
        publish: Callable[[str, bytes], Awaitable[None]] | None
        authority: DeviceAuthority

        async def _adopt_token(self, device_id: str) -> None: ...
        def _in_progress(self, device_id: str | None = None) -> list[DeviceCredential]: ...
        def credentials_of(self, device_id: str) -> list[DeviceCredential]: ...
        def _require_managed(self) -> None: ...
        async def _new_certificate(
            self, device_id: str, origin: CredentialOrigin, replaces: str | None, until: int | None
        ) -> Issued: ...
        async def _activate(self, cred: DeviceCredential, *, apply: bool = True) -> None: ...
        async def _end(
            self, cred: DeviceCredential, state: CredentialState, reason: str
        ) -> DeviceCredential: ...
        async def _save(self, cred: DeviceCredential) -> DeviceCredential: ...
        async def _event(
            self, what: CredentialEventKind, cred: DeviceCredential, /, **data: object
        ) -> None: ...
        async def _apply(self) -> None: ...
        async def _kick(self, device_id: str) -> None: ...
        def _spawn(self, coro: Awaitable[None], name: str) -> None: ...

    # ------------------------------------------------------------ rotation

    async def rotate(
        self, device_id: str, kind: CredentialKind | None = None, overlap_s: float | None = None
    ) -> Issued:
        """Issue a new credential and deliver it; the old one ends at the switch (see above)."""
        self._registry.require(device_id)
        self._require_managed()
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
                    port=self.authority.endpoint.x509_port,
                )
            else:
                token = new_token()
                cred = DeviceCredential(
                    id=new_cred_id(),
                    device_id=device_id,
                    kind=CredentialKind.TOKEN,
                    state=CredentialState.PENDING,
                    origin=CredentialOrigin.ROTATION,
                    created_ms=self._clock(),
                    secret_hash=self.authority.hash_secret(token),
                    replaces=old.id,
                    overlap_until_ms=until,
                )
                await self._save(cred)
                await self._event(K.ISSUED, cred, kind="token", origin="rotation")
                issued = Issued(cred, token=token)
                if old.kind is not CredentialKind.TOKEN:  # no token to displace: valid at once
                    await self._activate(cred)
                delivery = CredentialDelivery(
                    cred.id, "token", token=token, port=self.authority.endpoint.port
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

    def _on_status(self, event: DeviceStatusReceived) -> None:
        if event.online and any(
            self._creds.get(cid, None) is not None and self._creds[cid].device_id == event.device_id
            for cid in self._deliveries
        ):
            self._spawn(self._deliver_due(event.device_id), "credential-delivery")
