"""The device authority: the MQTT server's side of device identity, as the services need it.

The services decide who may connect and what each account may touch; an adapter
makes the MQTT server enforce it. Adapters:

- `mqttserver.authority.MosquittoAuthority`: the supervised Mosquitto (password file of
  `$7$` PBKDF2 hashes, ACL file, CRL, SIGHUP, session takeover, logins from its log);
- `mqttserver.unmanaged.UnmanagedAuthority`: an external MQTT server (`mqtt.url`) that
  nobody here manages: every management call says so in one line;
- `ports.memory_authority.MemoryDeviceAuthority`: the fake for unit tests;
- `mqttserver.rabbit_authority.RabbitAuthority`: the RabbitMQ cluster (issue 15), with its
  own hash format, applying changes through its management API.

The contract:
- Secrets are never kept. `hash_secret` turns one into an opaque *verifier* in the
  adapter's own format; the registry and the credential table store only verifiers,
  and `verify_secret` checks one. A verifier is meaningful to the adapter that made it.
- State is declarative. The services register one source (`set_source`) that returns
  the complete desired state (`DesiredAccess`); `apply()` makes the server enforce the
  latest one and returns once it does. Calls coalesce: however many changes arrive,
  an adapter may apply them together (the Mosquitto one at most once a second).
- `kick(username)` is `apply()` plus cutting every session of `username` that is live
  at the call (a revoked certificate is never re-checked on a live session; a claim
  session is over). It changes no credential: a still-valid secret may log in again.
- Logins the server accepted or refused on a device listener go to the callback
  given to `watch_logins`, when the server can tell them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, Self

from planty_broker.errors import MqttServerError

Access = Literal["read", "write", "readwrite", "deny"]
Listener = Literal["token", "x509"]


class AuthorityUnavailableError(MqttServerError):
    """This MQTT server set-up cannot do that (unmanaged server, no X.509 listener, ...)."""


@dataclass(frozen=True, slots=True)
class AclGrant:
    """One permission of a non-device account on an MQTT topic filter (`+`, `#` allowed)."""

    access: Access
    topic: str

    def __post_init__(self) -> None:
        if not self.topic or any(c in self.topic for c in "\r\n\0"):
            raise ValueError(f"ACL topic {self.topic!r} is empty or has a line break")


@dataclass(frozen=True, slots=True)
class Account:
    """A non-device account the services define (the claim slots): its grants always hold;
    it can log in only while `verifier` is set (a verifier from `hash_secret`)."""

    username: str
    grants: tuple[AclGrant, ...]
    verifier: str = ""


@dataclass(frozen=True, slots=True)
class DesiredAccess:
    """Everything the MQTT server must enforce, complete (never a diff).

    `devices`: device id (= username) -> verifier; each device may use only its own
    topic tree. Devices without a token (certificate only, revoked) are absent.
    `revoked_serials`: device certificates that must be refused although unexpired.
    `certificate_devices`: devices holding a live certificate (CN = their id), with or
    without a token. An adapter whose server checks only that a certificate is from the
    CA and not revoked (Mosquitto: `%u` ACL, CRL) needs nothing more; one whose server
    wants an account per certificate login (RabbitMQ) makes one, without a password.
    """

    devices: Mapping[str, str] = field(default_factory=dict)
    accounts: tuple[Account, ...] = ()
    revoked_serials: frozenset[int] = frozenset()
    certificate_devices: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class DeviceEndpoint:
    """What a device needs to reach the MQTT server: returned once at provisioning."""

    host: str
    port: int  # the token (username + password) listener
    tls: bool
    ca_pem: str | None  # the CA devices must trust; None: the server's own business
    x509_port: int = 0  # the client-certificate listener; 0: none
    # Every node devices may connect to, in order, (host, port) with host:port first (a
    # clustered MQTT server, docs/scale-out.md); empty: host:port is the only one.
    endpoints: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A device client certificate just issued (CN = the device id). The key is returned
    once and never kept."""

    cert_pem: str
    key_pem: str
    serial: int
    fingerprint: str  # SHA-256 of the DER encoding, hex
    not_after_ms: int


@dataclass(frozen=True, slots=True)
class AcceptedLogin:
    username: str
    address: str  # host part only
    listener: Listener | None  # None: the server could not tell which listener


@dataclass(frozen=True, slots=True)
class RefusedLogin:
    reason: str  # "not_authorised", "tls: certificate verify failed", ...
    address: str | None
    listener: Listener | None
    username: str | None = None  # the username it tried, when the server says (RabbitMQ)


LoginEvent = AcceptedLogin | RefusedLogin
AccessSource = Callable[[], DesiredAccess]
LoginSink = Callable[[LoginEvent], None]


class DeviceAuthority(Protocol):
    """What the services use of the MQTT server's credential and ACL management."""

    @property
    def managed(self) -> bool:
        """False for a server nobody here manages: credentials are the operator's business."""

    @property
    def endpoint(self) -> DeviceEndpoint:
        """Where devices connect (valid once the adapter has started)."""

    @property
    def claim_secret(self) -> str | None:
        """The factory claim secret shared by every factory-fresh device; None: no claims."""

    @property
    def restarts(self) -> int | None:
        """How often the managed server was restarted; None when none is run here."""

    def hash_secret(self, secret: str) -> str:
        """An opaque verifier of `secret` in this adapter's format (salted, one-way)."""

    def verify_secret(self, secret: str, verifier: str) -> bool:
        """True if `secret` matches `verifier`; constant time in the secret's content."""

    async def issue_certificate(self, common_name: str, days: int) -> IssuedCertificate:
        """A client certificate from the server's CA; AuthorityUnavailableError without one."""

    def set_source(self, source: AccessSource) -> None:
        """The one function that returns the complete desired state (read at every apply)."""

    async def apply(self, *, wait: bool = True) -> None:
        """Make the server enforce the latest desired state; returns once it does.

        `wait=False`: only ask for it (a change that may become live a moment later, e.g.
        a registration in a bulk import); an adapter may still wait."""

    async def kick(self, username: str) -> None:
        """`apply()`, and cut every session of `username` live at the call."""

    def watch_logins(self, sink: LoginSink) -> None:
        """Report logins on device listeners to `sink` (called on the event loop)."""


class AuthorityBasics:
    """What the memory fake, the external server's and the RabbitMQ adapter answer alike:
    where devices connect, the claim secret, no restart count (no server is run here), the
    one desired-state source and the login sinks; as an async context manager, nothing to
    start or stop (an adapter with something to start overrides it). The Mosquitto adapter,
    which runs its server, answers these from its supervisor."""

    def __init__(self, endpoint: DeviceEndpoint, claim_secret: str | None = None) -> None:
        self._endpoint = endpoint
        self._claim_secret = claim_secret
        self._source: AccessSource = DesiredAccess
        self._sinks: list[LoginSink] = []

    @property
    def endpoint(self) -> DeviceEndpoint:
        return self._endpoint

    @property
    def claim_secret(self) -> str | None:
        return self._claim_secret

    @property
    def restarts(self) -> int | None:
        return None

    def set_source(self, source: AccessSource) -> None:
        self._source = source

    def watch_logins(self, sink: LoginSink) -> None:
        self._sinks.append(sink)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
