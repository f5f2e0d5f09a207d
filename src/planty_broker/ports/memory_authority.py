"""`MemoryDeviceAuthority`: the device-authority port in memory, for fast unit tests.

It "enforces" by remembering what the last `apply()` handed over, so a test can ask
whether a secret would be accepted (`accepts`), and it records every kick with the
accounts enforced at that moment. Its verifiers are in a format of its own
(`mem$<salt>$<sha256>`), which keeps the services honest: they store and compare
verifiers only through the port, never as Mosquitto's `$7$`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

from planty_broker.ports.device_authority import (
    AccessSource,
    AuthorityBasics,
    AuthorityUnavailableError,
    DeviceEndpoint,
    IssuedCertificate,
    LoginEvent,
)

CertificateIssuer = Callable[[str, int], IssuedCertificate]


class MemoryDeviceAuthority(AuthorityBasics):
    """See the module docstring; `issuer` signs certificates (None: no X.509 listener)."""

    def __init__(
        self,
        *,
        endpoint: DeviceEndpoint | None = None,
        issuer: CertificateIssuer | None = None,
        claim_secret: str | None = "claim-secret",  # noqa: S107 - a test value
        managed: bool = True,
    ) -> None:
        super().__init__(
            endpoint or DeviceEndpoint("localhost", 8883, True, None, 8884 if issuer else 0),
            claim_secret,
        )
        self._issuer = issuer
        self._managed = managed
        self.users: dict[str, str] = {}  # what the server accepts since the last apply
        self.revoked: list[int] = []
        self.applies = 0
        self.kicks: list[tuple[str, dict[str, str]]] = []  # (username, users at the kick)

    @property
    def managed(self) -> bool:
        return self._managed

    def hash_secret(self, secret: str) -> str:
        salt = secrets.token_hex(8)
        return f"mem${salt}${hashlib.sha256((salt + secret).encode()).hexdigest()}"

    def verify_secret(self, secret: str, verifier: str) -> bool:
        kind, _, rest = verifier.partition("$")
        salt, _, digest = rest.partition("$")
        if kind != "mem" or not salt or not digest:
            return False
        mine = hashlib.sha256((salt + secret).encode()).hexdigest()
        return hmac.compare_digest(mine, digest)

    async def issue_certificate(self, common_name: str, days: int) -> IssuedCertificate:
        if self._issuer is None:
            raise AuthorityUnavailableError(
                "X.509 device certificates need the X.509 listener: set mqtt.x509 = true"
            )
        return self._issuer(common_name, days)

    def set_source(self, source: AccessSource) -> None:
        self._source = source

    async def apply(self, *, wait: bool = True) -> None:
        wanted = self._source()
        self.applies += 1
        users = dict(wanted.devices)
        users.update((a.username, a.verifier) for a in wanted.accounts if a.verifier)
        self.users = users
        self.revoked = sorted(wanted.revoked_serials)

    async def kick(self, username: str) -> None:
        await self.apply()
        self.kicks.append((username, dict(self.users)))

    # ------------------------------------------------------------ for tests

    def accepts(self, username: str, secret: str) -> bool:
        """Would the server accept this login now (as of the last apply)?"""
        verifier = self.users.get(username)
        return verifier is not None and self.verify_secret(secret, verifier)

    def emit(self, event: LoginEvent) -> None:
        """Report a login, as a server would."""
        for sink in self._sinks:
            sink(event)
