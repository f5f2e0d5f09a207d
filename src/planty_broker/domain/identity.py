"""Identity values: API tokens, the account pairing, device credentials. Pure data, no I/O.

Secrets never live here: a token is kept as its digest or `$7$` hash, a
certificate by serial and fingerprint. `repr()` of every value is safe to log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TokenScope(StrEnum):
    """What an API token may do: `admin` everything, `server` the device API, `read` GET only."""

    ADMIN = "admin"
    SERVER = "server"
    READ = "read"


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A stored API token: the SHA-256 digest of the secret, never the secret."""

    id: str
    name: str
    scope: TokenScope
    digest: str
    origin: str  # "api", "cli", "pairing"
    created_ms: int
    last_used_ms: int | None = None
    revoked_ms: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_ms is None


@dataclass(frozen=True, slots=True)
class Pairing:
    """The broker is paired with one user account; `token_id` is the server's API token."""

    account_id: str
    token_id: str
    paired_ms: int


class CredentialKind(StrEnum):
    TOKEN = "token"  # noqa: S105 - MQTT username = device id, password = token
    X509 = "x509"  # client certificate from the broker's CA, CN = device id


class CredentialState(StrEnum):
    """Where a device credential is in its life.

    pending: issued, not yet accepted by the MQTT server (a token waiting for its switch);
    active: accepted; retired: replaced by a rotation; revoked: withdrawn at once.
    """

    PENDING = "pending"
    ACTIVE = "active"
    RETIRED = "retired"
    REVOKED = "revoked"


LIVE_STATES = (CredentialState.PENDING, CredentialState.ACTIVE)


class CredentialOrigin(StrEnum):
    OPERATOR = "operator"  # `planty devices add` / POST /devices
    CLAIM = "claim"  # fleet provisioning by claim
    ROTATION = "rotation"
    ISSUED = "issued"  # an extra credential issued through the API (a certificate)


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    """One credential of one device and its life; `secret_hash` is the `$7$` hash of a token."""

    id: str
    device_id: str
    kind: CredentialKind
    state: CredentialState
    origin: CredentialOrigin
    created_ms: int
    secret_hash: str = ""  # token only
    serial: str | None = None  # x509 only: hex serial number (for the CRL)
    fingerprint: str | None = None  # x509 only: SHA-256 of the DER certificate, hex
    not_after_ms: int | None = None  # x509 only
    valid_from_ms: int | None = None  # when the MQTT server started accepting it
    first_used_ms: int | None = None
    replaces: str | None = None  # rotation: the credential this one replaces
    overlap_until_ms: int | None = None  # rotation: the old one is refused from then at the latest
    ended_ms: int | None = None
    end_reason: str | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


class CredentialEventKind(StrEnum):
    """Every step of a credential's life is an event of type `credential`."""

    ISSUED = "issued"
    DELIVERED = "delivered"  # the device confirmed it stored a rotated credential
    ACTIVATED = "activated"  # the MQTT server accepts it from now on
    USED_FIRST = "used_first"
    ROTATED = "rotated"  # the old credential was retired by a rotation
    REVOKED = "revoked"
    LOGIN_REFUSED = "login_refused"
    CLAIMED = "claimed"  # a device was created by claim
    CLAIM_REFUSED = "claim_refused"


@dataclass(frozen=True, slots=True)
class StoredPairingCode:
    """A pairing code as every gateway instance sees it: its salted hash, never the code."""

    id: str
    digest: str  # `services.access.pairing.hash_code`
    created_ms: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class ClaimWindow:
    """The claim window, shared by every gateway instance: open while `until_ms` is ahead
    and `closed_ms` is None; `claims` counts the devices claimed since it last opened,
    `max_claims` the most it takes (provisioning.max_claims_per_window)."""

    opened_ms: int
    until_ms: int
    closed_ms: int | None = None
    claims: int = 0
    max_claims: int = 50

    def open_at(self, now_ms: int) -> bool:
        return self.closed_ms is None and now_ms < self.until_ms
