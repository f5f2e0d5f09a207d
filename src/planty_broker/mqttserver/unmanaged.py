"""`UnmanagedAuthority`: the device-authority port for an external MQTT server (`mqtt.url`).

Nobody here manages that server: device credentials and ACLs are provisioned on it by
its operator. Applying changes has nothing to do; asking for anything only a managed
server can do (certificates, claims) raises `AuthorityUnavailableError` with one line.
Device tokens are still hashed as the supervised Mosquitto does (`$7$`), so a store
moved back to a supervised set-up keeps working.
"""

from __future__ import annotations

from planty_broker.mqttserver.passwords import hash_token, verify_token
from planty_broker.ports.device_authority import (
    AccessSource,
    AuthorityBasics,
    AuthorityUnavailableError,
    DeviceEndpoint,
    IssuedCertificate,
    LoginSink,
)

UNMANAGED = (
    "device credentials are enforced by the supervised MQTT server; with mqtt.url set, "
    "manage them on your MQTT server"
)


class UnmanagedAuthority(AuthorityBasics):
    """The port's adapter for an MQTT server nobody here manages (see the module docstring)."""

    def __init__(self, endpoint: DeviceEndpoint) -> None:
        super().__init__(
            endpoint
        )  # nothing to start (AuthorityBasics): the server is someone else's

    @property
    def managed(self) -> bool:
        return False

    def hash_secret(self, secret: str) -> str:
        return hash_token(secret)

    def verify_secret(self, secret: str, verifier: str) -> bool:
        return verify_token(secret, verifier)

    async def issue_certificate(self, common_name: str, days: int) -> IssuedCertificate:
        raise AuthorityUnavailableError(UNMANAGED)

    def set_source(self, source: AccessSource) -> None:
        """Nothing to enforce here."""

    async def apply(self, *, wait: bool = True) -> None:
        """Nothing to enforce here."""

    async def kick(self, username: str) -> None:
        """No session here to cut."""

    def watch_logins(self, sink: LoginSink) -> None:
        """The external server's logins are not seen here."""
