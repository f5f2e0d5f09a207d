"""Logins the MQTT server saw (the device authority's login events), as credential events.

An accepted login on a device listener marks the device's credential of that type
as used (`used_first`, once); a refused one becomes a `login_refused` event with
its reason. A refusal that names a known device's username (RabbitMQ's do) is that
device's. Without a username, it is named for a device only when that is unambiguous:
exactly one device whose credential ended within the last hour last logged in from the
same address. (Mosquitto, for one, logs a refusal before it knows the username.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from planty_broker.domain.identity import (
    CredentialEventKind,
    CredentialKind,
    CredentialState,
    DeviceCredential,
)
from planty_broker.ports.device_authority import AcceptedLogin, LoginEvent
from planty_broker.services.credentials.events import CredentialEvent
from planty_broker.services.credentials.service import CredentialService
from planty_broker.services.registry import now_ms

ATTRIBUTE_WINDOW_MS = 3_600_000


class LoginObserver:
    """Feeds login events to the credential service (first use) and the event log."""

    def __init__(self, credentials: CredentialService, clock: Callable[[], int] = now_ms) -> None:
        self._creds = credentials
        self._clock = clock
        self._last_login: dict[str, tuple[str, int]] = {}  # device -> (address, at)

    async def on_logins(self, events: Sequence[LoginEvent]) -> None:
        """Login events in the order the MQTT server logged them; the first uses among them
        are written in one transaction, the refusals in one event-log append."""
        at = self._clock()
        first_uses: list[tuple[DeviceCredential, int, str]] = []
        refused: list[CredentialEvent] = []
        for event in events:
            if isinstance(event, AcceptedLogin):
                self._accepted(event, at, first_uses)
                continue
            refused.append(
                CredentialEvent(
                    CredentialEventKind.LOGIN_REFUSED,
                    self._attribute(event.username, event.address, at),
                    at,
                    data={
                        "reason": event.reason,
                        "address": event.address,
                        "listener": event.listener,
                    },
                )
            )
        if first_uses:
            await self._creds.mark_first_uses(first_uses)
        if refused:
            await self._creds.events.record_many(refused)

    def _accepted(
        self, event: AcceptedLogin, at: int, first_uses: list[tuple[DeviceCredential, int, str]]
    ) -> None:
        device_id = event.username
        if not self._creds.known_device(device_id):
            return  # claim slots
        self._last_login[device_id] = (event.address, at)
        kind = CredentialKind.X509 if event.listener == "x509" else CredentialKind.TOKEN
        used = [
            c
            for c in self._creds.credentials_of(device_id)
            if c.kind is kind and c.state is CredentialState.ACTIVE
        ]
        if len(used) == 1 and used[0].first_used_ms is None:  # else: cannot tell which
            first_uses.append((used[0], at, event.address))

    def _attribute(self, username: str | None, address: str | None, at: int) -> str | None:
        if username is not None and self._creds.known_device(username):
            return username  # the server named it (RabbitMQ does)
        if address is None:
            return None
        matches = [
            device_id
            for device_id, ended in self._creds.ended_at.items()
            if at - ended < ATTRIBUTE_WINDOW_MS
            and self._last_login.get(device_id, ("", 0))[0] == address
            and not any(c.live for c in self._creds.credentials_of(device_id))
        ]
        return matches[0] if len(matches) == 1 else None
