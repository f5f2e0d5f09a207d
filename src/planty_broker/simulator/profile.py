"""What a simulated device is (credentials, hardware profile) and how it misbehaves (faults)."""

from __future__ import annotations

import functools
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SENSORS = ("temperature", "soil_moisture", "light")
DEFAULT_ACTUATORS = ("pump", "lamp")


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """How one device reaches the MQTT server: what `POST /api/v1/devices` returns, flattened.

    `tls=False` (plain TCP) exists for tests against a loopback Mosquitto only.
    The token never appears in `repr()`, so it cannot leak into a log line.
    """

    device_id: str
    token: str = field(repr=False)
    host: str
    port: int
    tls: bool = True
    ca_pem: str | None = field(default=None, repr=False)
    # An X.509 client certificate (CN = device id) and its key: log in with it instead of
    # the token (on the broker's X.509 listener, `port`).
    cert_pem: str | None = field(default=None, repr=False)
    key_pem: str | None = field(default=None, repr=False)
    # More nodes of the same MQTT cluster (scale-out): a device that cannot reach one, or
    # loses it, moves to the next (host, port), round robin.
    alternates: tuple[tuple[str, int], ...] = ()

    def endpoint(self, n: int) -> tuple[str, int]:
        """The `n`-th endpoint to try (the first is host:port), round robin."""
        every = ((self.host, self.port), *self.alternates)
        return every[n % len(every)]

    @property
    def kind(self) -> str:
        """`x509` when it logs in with a client certificate, else `token`."""
        return "x509" if self.cert_pem else "token"

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS trusting `ca_pem` (else the system CAs), host name checked; None = plain TCP."""
        if not self.tls:
            return None
        if not self.ca_pem:  # an external MQTT server with a publicly trusted certificate
            return _system_tls_context()
        try:
            if self.cert_pem and self.key_pem:
                return client_cert_context(self.ca_pem, self.cert_pem, self.key_pem)
            return tls_context(self.ca_pem)
        except ssl.SSLError as exc:
            raise ValueError(
                f"device {self.device_id}: the CA certificate is not usable PEM ({exc.reason})"
            ) from None


@functools.lru_cache(maxsize=1)
def _system_tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@functools.lru_cache(maxsize=8)
def tls_context(ca_pem: str) -> ssl.SSLContext:
    """One shared client context per CA: parsing the CA once matters for a 1,000-device fleet."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@functools.lru_cache(maxsize=64)
def client_cert_context(ca_pem: str, cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A client context that presents a certificate (Python loads keys only from files:
    they exist for the duration of this call, 0600, in a private temporary folder)."""
    ctx = tls_context.__wrapped__(ca_pem)
    with tempfile.TemporaryDirectory(prefix="planty-sim-") as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert.write_text(cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


# Bad telemetry for bad-input tests, sent in turn by `Faults.malformed_every`.
MALFORMED_PAYLOADS: tuple[bytes, ...] = (
    b"{not json",
    b"[1, 2, 3]",
    b'{"seq": "seven", "readings": {"temperature": 20.5}}',
    b'{"readings": {"temperature": 20.5}}',
    b'{"seq": -1, "readings": {"temperature": 20.5}}',
    b"\xff\xfe\x00 not utf-8",
)


@dataclass(frozen=True, slots=True)
class Faults:
    """Ways a device can misbehave, for tests and benchmarks; the default is a healthy device.

    - `ack`: False = executes commands but never publishes an ack (issue 3 re-send test).
    - `ack_delay_s`: every ack (ping included) is published this late.
    - `drop_rate`: fraction of received commands lost before the firmware sees them
      (neither executed nor acked), as if the radio dropped them.
    - `telemetry_drop_rate`: fraction of telemetry messages skipped after taking a `seq`,
      so the broker sees a gap.
    - `malformed_every`: every Nth telemetry tick sends a malformed payload instead
      (it takes no `seq`); 0 = never.
    - `update_crash_rate`: fraction of updates whose new version crashes at boot on this
      device; it stays away for `max_boots` boots, then rolls back by itself (1.0 = always).
    """

    ack: bool = True
    ack_delay_s: float = 0.0
    drop_rate: float = 0.0
    telemetry_drop_rate: float = 0.0
    malformed_every: int = 0
    update_crash_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("drop_rate", "telemetry_drop_rate", "update_crash_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"faults.{name} must be between 0 and 1, got {value}")
        if self.ack_delay_s < 0:
            raise ValueError(f"faults.ack_delay_s must be >= 0, got {self.ack_delay_s}")
        if self.malformed_every < 0:
            raise ValueError(f"faults.malformed_every must be >= 0, got {self.malformed_every}")


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """The hardware and firmware a simulated device pretends to be, plus its link settings.

    `send_ts=False` omits `ts` from telemetry, like an ESP32 whose clock was never set.
    `time_scale` speeds up the plant (drying, day curve) for demos; 1.0 is real time.
    `max_inflight` caps unacked QoS 1 publishes, like the ESP-IDF MQTT outbox.
    """

    fw: str = "sim-1.0.0"
    sensors: tuple[str, ...] = DEFAULT_SENSORS
    actuators: tuple[str, ...] = DEFAULT_ACTUATORS
    interval_s: float = 60.0
    send_ts: bool = True
    rssi: int = -61
    keepalive_s: int = 60
    clean_session: bool = True
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_inflight: int = 20
    dedup_memory: int = 256
    track_acks: bool = False  # keep every PUBACKed telemetry seq in `acked_seqs` (checks)
    time_scale: float = 1.0
    first_boot: int = 1
    faults: Faults = Faults()
    ota: bool = True  # takes updates over the air (status `ota`), as device/planty_ota.py
    boot_s: float = 0.5  # a reboot (after an update) keeps the device away this long

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        if self.keepalive_s < 1:
            raise ValueError(f"keepalive_s must be >= 1, got {self.keepalive_s}")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError("reconnect_min_s must be > 0 and <= reconnect_max_s")
        if self.dedup_memory < 1:
            raise ValueError(f"dedup_memory must be >= 1, got {self.dedup_memory}")
