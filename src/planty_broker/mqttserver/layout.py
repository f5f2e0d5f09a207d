"""What the supervised Mosquitto looks like: ports, limits and where its files live.

`MosquittoLayout.from_settings(settings)` is the only place that reads
`Settings` for this package; everything else takes the frozen layout.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from planty_broker.config import Settings
from planty_broker.ports.device_authority import AclGrant

GATEWAY_USERNAME = "planty-gateway"
PROBE_USERNAME = "planty-probe"  # the supervisor's own readiness check
# Never valid as device ids: these accounts are privileged or internal.
RESERVED_USERNAMES = frozenset({GATEWAY_USERNAME, PROBE_USERNAME})

# Safe in the password file (no ':'), in ACL `user` lines and in `%u` topic
# substitution (no '/', '+', '#', whitespace).
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

FULL_ACCESS = (AclGrant("readwrite", "#"), AclGrant("read", "$SYS/#"))


@dataclass(frozen=True, slots=True)
class MqttAccount:
    """A non-device MQTT account (gateway, bench observer, claim slots).

    An empty `password_hash` writes the account's ACL grants but no password line: nobody
    can log in as it until a password for it is passed with the device accounts
    (how the claim slots are opened and closed without touching the ACL file).
    """

    username: str
    password_hash: str
    grants: tuple[AclGrant, ...] = FULL_ACCESS


def valid_username(username: str) -> bool:
    """True if `username` is safe in Mosquitto's password file, ACL file and `%u` patterns."""
    return USERNAME_RE.fullmatch(username) is not None


@dataclass(frozen=True, slots=True)
class MosquittoLayout:
    """Ports, limits and file locations of the supervised Mosquitto (built once from Settings)."""

    data_dir: Path
    port: int  # device TLS listener
    internal_port: int  # loopback plaintext listener for the gateway's own connection; 0: pick
    bind: str = "0.0.0.0"  # noqa: S104 - device listener; TLS + auth
    plaintext_loopback_port: int = 0  # 0: no plaintext device listener
    x509_port: int = 0  # 0: no X.509 client-certificate listener for devices (or pick_x509)
    pick_x509: bool = False  # an X.509 listener on a port picked and recorded (ports.py)
    public_host: str = "localhost"  # the host name devices use (first SAN of the cert)
    extra_hostnames: tuple[str, ...] = ()
    topic_prefix: str = "planty/v1"
    max_queued_messages: int = 1_000_000
    max_inflight_messages: int = 1000
    max_packet_size: int = 1024 * 1024
    autosave_interval_s: int = 60
    persistent_client_expiration: str = "30d"
    mosquitto_bin: str = "mosquitto"
    # Mosquitto's own folder when not `data_dir/mosquitto`: set by the supervisor when the
    # unprivileged `mosquitto` user cannot enter the data folder (process.plan_runtime).
    runtime_dir: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MosquittoLayout:
        """The layout for `planty run` on its embedded defaults or the given overrides."""
        m = settings.mqtt
        public = m.public_host or socket.gethostname() or "localhost"
        extra = () if m.bind in ("", "0.0.0.0", "::") else (m.bind,)  # noqa: S104
        return cls(
            data_dir=settings.data_dir,
            port=m.port,
            internal_port=m.internal_port,
            bind=m.bind,
            plaintext_loopback_port=m.plaintext_loopback_port,
            x509_port=m.x509_port if m.x509 else 0,
            pick_x509=m.x509 and not m.x509_port,
            public_host=public,
            extra_hostnames=extra,
            topic_prefix=m.topic_prefix,
            max_queued_messages=m.max_queued_messages,
            max_inflight_messages=m.max_inflight,
            # Oversize payloads must reach the gateway to be counted per device;
            # only absurd packets are cut off by Mosquitto itself.
            max_packet_size=max(1024 * 1024, 16 * m.max_payload_bytes),
            mosquitto_bin=m.mosquitto_bin,
        )

    @property
    def internal_host(self) -> str:
        """The internal listener is always on IPv4 loopback."""
        return "127.0.0.1"

    @property
    def hostnames(self) -> tuple[str, ...]:
        """Names and addresses the server certificate must cover (localhost is always added)."""
        return (self.public_host, *self.extra_hostnames)

    @property
    def directory(self) -> Path:
        """Mosquitto's own folder: config, password/ACL files, TLS files, persistence, pid,
        log; the only files the `mosquitto` user can read."""
        return self.runtime_dir or self.data_dir / "mosquitto"

    @property
    def tls_cert_path(self) -> Path:
        """Mosquitto's copy of the server certificate (pki/ stays the gateway's own)."""
        return self.directory / "server.pem"

    @property
    def tls_key_path(self) -> Path:
        return self.directory / "server.key"

    @property
    def tls_ca_path(self) -> Path:
        """The CA bundle the X.509 listener trusts (one CA, or old + new during a rotation)."""
        return self.directory / "ca.pem"

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def password_path(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_path(self) -> Path:
        return self.directory / "acl"

    @property
    def crl_path(self) -> Path:
        """Revoked device certificates (PEM CRL), read by the X.509 listener on every reload."""
        return self.directory / "revoked.crl.pem"

    @property
    def pid_path(self) -> Path:
        return self.directory / "mosquitto.pid"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def stderr_path(self) -> Path:
        """Where Mosquitto's stdout/stderr go (errors before its log file is open)."""
        return self.directory / "mosquitto.stderr.log"

    @property
    def gateway_secret_path(self) -> Path:
        """The gateway's own MQTT password, generated once (mode 0600)."""
        return self.data_dir / "mqtt-gateway.secret"
