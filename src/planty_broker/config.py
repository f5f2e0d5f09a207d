"""Settings: one TOML file plus `PLANTY_*` environment overrides, validated once at start.

`load_settings()` is the only place that reads the environment or the config
file. The result is a frozen `Settings` passed down to every component. A bad
value raises `ConfigError` with one line naming the key, e.g.
`config: api.port: Expected int <= 65535, got 70000`.

Environment overrides are `PLANTY_<SECTION>_<KEY>` (e.g. `PLANTY_API_PORT=9000`,
`PLANTY_MQTT_URL=mqtts://...`), plus `PLANTY_DATA_DIR` and `PLANTY_ADMIN_TOKEN`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from planty_broker.domain.rules.clock import LocalClock
from planty_broker.errors import PlantyError
from planty_broker.protocol import Topics

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class ConfigError(PlantyError, ValueError):
    """A configuration value is wrong; the message names the key and what is expected."""


class GatewaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    data_dir: str = "./data"  # store, certificates, tokens, Mosquitto files (created 0700)
    broker_id: str = ""  # empty: generated once and stored in the data folder
    name: str = "Planty Broker"  # shown to the server and in Firestore
    admin_token: str = ""  # PLANTY_ADMIN_TOKEN; empty: generated, written to data_dir/admin-token


class ApiSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"  # loopback by default; expose through a TLS reverse proxy
    port: Port = 8080  # HTTP API, dashboard and /metrics
    # Open HTTP connections and event streams at most; beyond, new requests get 503 at once
    # (each costs memory: a waiting command, an SSE stream).
    max_connections: PositiveInt = 1000
    # Wrong bearer tokens from one client address in the window; beyond, 429 with Retry-After
    # (a valid token always passes). IPv6 addresses count by their /64.
    auth_max_failures: PositiveInt = 20
    auth_failure_window_s: PositiveFloat = 60.0
    auth_clients_max: PositiveInt = 10_000  # client addresses remembered (oldest forgotten)


class MqttSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Empty url: supervise our own Mosquitto. `mqtt://host:port` or `mqtts://host:port`:
    # connect to an external MQTT server and manage nothing on it.
    url: str = ""
    username: str = ""  # for an external server
    password: str = ""  # for an external server; never logged
    # The device-facing TLS listener of the supervised Mosquitto.
    bind: str = "0.0.0.0"  # noqa: S104 - devices connect over the network; TLS + auth
    port: Port = 8883  # devices connect here over TLS
    public_host: str = ""  # host name devices use; empty: this machine's host name
    # Loopback-only listener for the gateway's own privileged connection; 0: a free port
    # picked on the first start and recorded in the data folder (ports.json); a data
    # folder from before ports.json keeps 18830 (docs/operations.md, Upgrading).
    internal_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    mosquitto_bin: str = "mosquitto"  # the Mosquitto binary (name on PATH or a path)
    # Plaintext device listener, only on loopback and only when asked (0 = none).
    plaintext_loopback_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    topic_prefix: str = "planty/v1"  # every device topic starts with this
    # External server only: empty means "planty-gateway". The supervised Mosquitto forces
    # client id = username, so there the gateway is always "planty-gateway".
    client_id: str = ""
    keepalive_s: PositiveInt = 60  # MQTT keepalive; devices should use the same (presence)
    max_payload_bytes: PositiveInt = 64 * 1024  # larger device messages count as `oversize`
    max_inflight: PositiveInt = 1000  # our own cap on unacked QoS 1 publishes
    # QoS 0 device messages waiting for the store at most (QoS 1 ones are bounded by the
    # in-flight window above); more are dropped and counted (/metrics).
    max_pending_qos0: PositiveInt = 10_000
    # Mosquitto's per-client queue; its default (1000) silently drops a persistent
    # session's backlog, so a gateway restart under load would lose readings.
    max_queued_messages: PositiveInt = 1_000_000
    # Devices with an X.509 client certificate (CN = device id) log in on this TLS listener
    # (docs/security.md). `x509 = false` opens no such listener.
    x509: bool = True
    # 0: a free port picked on the first start and recorded in the data folder (ports.json);
    # a data folder from before ports.json keeps mqtt.port + 1, which its devices were given
    # (docs/operations.md, Upgrading). Set it when a firewall must know the port.
    x509_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    # Credential changes (registrations, revocations, claims) reach the supervised Mosquitto
    # in one file rewrite + reload at most this often, however many arrive (a reload stalls
    # Mosquitto's single thread while it re-reads the files and re-checks every client).
    reload_interval_s: Annotated[float, msgspec.Meta(ge=0.0, le=60.0)] = 1.0


class ClusterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Several gateway instances on a RabbitMQ cluster and one PostgreSQL (docs/scale-out.md)."""

    # "": one gateway, its own MQTT server (the default). "rabbitmq": a RabbitMQ cluster with
    # rabbitmq_mqtt; then store.url must be PostgreSQL and the mqtt.url/port keys are unused.
    engine: Literal["", "rabbitmq"] = ""
    amqp_urls: str = ""  # comma-separated, one per node: amqp://user:password@host:port/
    management_urls: str = ""  # comma-separated, one per node: http://host:15672
    admin_user: str = ""  # the management API's user (manages device users)
    admin_password: str = ""  # never logged
    # What devices are given: comma-separated host:port of the nodes' MQTT-over-TLS listeners
    # (a device tries them in turn), and the CA file they must trust.
    device_endpoints: str = ""
    ca_file: str = ""
    # Device certificates (X.509, CN = device id) on the nodes' listeners: the key of the CA
    # in ca_file signs them (every instance reads it, 0600); "": tokens only.
    ca_key_file: str = ""
    # Where the instances write the CA's CRL (<hash>.r0) that the nodes read at every TLS
    # handshake (ssl_options.crl_check = peer, docs/scale-out.md); "": none is written.
    crl_dir: str = ""
    # A folder every instance reads: the fleet's claim secret (mqtt-claim.secret) lives there.
    shared_dir: str = ""
    queue: str = "planty.ingest"  # the quorum queue every instance consumes
    prefetch: PositiveInt = 1000  # unacked deliveries per instance at most
    # The command outbox and the other single-owner loops run on one instance at a time,
    # the holder of a PostgreSQL lease; another takes over when it dies.
    lease_s: PositiveFloat = 5.0
    # How the other instances reach this one's HTTP API (they forward the lease holder's
    # routes to it); empty: http://<api.host>:<api.port> (127.0.0.1 for 0.0.0.0).
    api_url: str = ""

    def split(self, value: str) -> list[str]:
        return [v.strip() for v in value.split(",") if v.strip()]


class StoreSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str = ""  # empty: sqlite file in the data folder; else a SQLAlchemy URL
    batch_max: PositiveInt = 500  # readings per transaction at most
    batch_wait_ms: Annotated[float, msgspec.Meta(ge=0)] = 5.0  # wait this long to fill a batch
    # SQLite only. "full": a committed batch survives a power cut (fsync per commit).
    # "normal": survives a gateway crash (kill -9) but maybe not a power cut; ~30% faster.
    sqlite_synchronous: Literal["full", "normal"] = "full"
    # Disk stays bounded (docs/operations.md): raw readings are kept this long (by arrival),
    # after they have been rolled up per device, sensor and hour (count, min, max, avg, last).
    readings_keep_days: PositiveFloat = 90.0
    rollups_keep_days: PositiveFloat = 5 * 366.0  # the hourly rollups: years of history
    housekeeping_every_s: PositiveFloat = 60.0  # how often readings are rolled up and pruned
    # Messages the store refused for good (dead letters: GET /api/v1/dead-letters) are kept
    # this long, then deleted (once an hour).
    dead_letters_keep_days: PositiveFloat = 30.0


class PresenceSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    default_interval_s: PositiveFloat = 60.0  # when a device did not declare interval_s
    check_every_s: PositiveFloat = 1.0  # how often silence and lateness are checked
    keep_days: PositiveFloat = 400.0  # transitions older than this go (each device keeps its last)
    # Transitions held in memory while the store cannot take them; beyond, the oldest are
    # dropped and counted (planty_presence_dropped_total).
    max_pending: PositiveInt = 100_000


class CommandSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The command outbox (issue 3); docs/commands.md explains each knob."""

    ack_timeout_s: PositiveFloat = 10.0  # no ack this long after a send: re-send (same id)
    max_attempts: PositiveInt = 3  # sends before a command without an ack is `failed`
    max_queue_per_device: PositiveInt = 100  # waiting + unacked per device; more get 429
    max_on_seconds: PositiveFloat = 300.0  # `{actuator}.on` without `seconds` runs this long
    # Longer limits for actuators that are safe to run long (a grow lamp, a fan); the pump
    # keeps the short default, so a lost "off" cannot flood a plant.
    max_on_seconds_by_actuator: dict[str, float] = msgspec.field(
        default_factory=lambda: {"lamp": 14400.0, "fan": 3600.0}
    )
    ping_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0  # RTT probe; 0 = never
    dispatch_rate_per_s: PositiveFloat = 1000.0  # token bucket over every publish
    dispatch_burst: PositiveInt = 100
    default_ttl_s: PositiveFloat = 3600.0  # deadline (`exp`) when a command gives no ttl_s
    max_ttl_s: PositiveFloat = 7 * 86400.0
    read_wait_s: PositiveFloat = 10.0  # how long `POST /devices/{id}/read` waits by default
    keep_final_s: PositiveFloat = 30 * 86400.0  # final commands are deleted after this


class EventSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The event log (issue 3): retention waits for consumers up to a bound on disk; drops are
    counted, never silent; device errors coalesced (docs/events.md)."""

    # Without named consumers: events older than this, or beyond this many, go.
    retention_max_age_s: PositiveFloat = 7 * 86400.0
    retention_max_rows: PositiveInt = 1_000_000
    # With consumers, retention waits for them, up to these bounds on disk: a consumer further
    # behind loses events (counted on it, in deleted_unconfirmed and /metrics).
    unconfirmed_max_age_s: PositiveFloat = 30 * 86400.0
    unconfirmed_max_rows: PositiveInt = 5_000_000
    # `credential` and `audit` events outlive the rest this long
    security_keep_days: PositiveFloat = 400.0
    prune_every_s: PositiveFloat = 60.0
    # Device errors: at most one event per device and kind this often, with a count.
    error_every_s: PositiveFloat = 10.0
    error_keys_max: PositiveInt = 10_000  # (device, kind) windows; beyond, one overflow per kind
    sse_keepalive_s: PositiveFloat = 15.0


class StatsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Fleet statistics (issue 7); docs/dashboard.md explains each knob."""

    enabled: bool = True  # false: no per-device counters, latency or availability (benchmarks)
    snapshot_every_s: PositiveFloat = 300.0  # counters saved to the store this often and at stop
    summary_cache_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0  # device-list summary reuse


class MetricsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`/metrics` for Prometheus (issue 7); docs/metrics.md."""

    enabled: bool = True
    # Secure by default: scrapers send `Authorization: Bearer <token>` (a read token will do).
    require_token: bool = True
    # Per-device series (label `device`) for at most this many devices; 0 = none (the default).
    per_device_max: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0


class DashboardSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True  # the web dashboard at /dashboard


class PairingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Pairing with a user's account and API tokens (issue 4); docs/security.md."""

    code_ttl_s: PositiveFloat = 600.0  # a pairing code is valid this long, and used once
    max_failures: PositiveInt = 5  # refused claims per client address in the window before 429
    failure_window_s: PositiveFloat = 60.0
    # Refused claims for one account in the window; then clients that failed get 429 for it
    # (a client that has not failed always gets its try: nobody locks the owner out).
    max_account_failures: PositiveInt = 20
    clients_max: PositiveInt = 10_000  # addresses / accounts remembered each (oldest forgotten)
    token_last_used_flush_s: PositiveFloat = 30.0  # API token use is written this often


class ProvisioningSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Device credentials: claim window, rotation, certificates (issue 4); docs/security.md."""

    claim_slots: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64  # planty-claim-0..N-1
    default_window_s: PositiveFloat = 300.0  # `planty devices accept` without --for
    max_window_s: PositiveFloat = 86400.0
    claim_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0  # then the claim session is cut
    # Claims one open window takes (each opening starts a fresh count); beyond: `window_full`.
    max_claims_per_window: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 50
    claims_per_s: PositiveFloat = 5.0  # claims served per second at most; beyond: `busy`
    rotation_overlap_s: PositiveFloat = 86400.0  # the old credential works at most this long
    delivery_retry_s: PositiveFloat = 10.0  # re-send a rotated credential without an ack
    cert_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 825  # device certificate lifetime


class FirestoreSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The Firestore connector (issue 6), off by default; docs/firestore.md explains each knob."""

    enabled: bool = False
    project_id: str = ""  # empty: the project of the credentials
    credentials_file: str = ""  # service-account JSON; empty: application default credentials
    # host:port of the Firestore emulator (no credentials then); FIRESTORE_EMULATOR_HOST sets it.
    emulator_host: str = ""
    database: str = "(default)"
    broker_id: str = ""  # document id under brokers/; empty: gateway.broker_id
    debounce_s: PositiveFloat = 1.0  # at most one write per document this often (Firestore: ~1/s)
    history_bucket: Literal["hour", "day"] = "hour"  # readings rolled up per device and bucket
    history_keep_days: PositiveFloat = 90.0  # written as `expire_at` for a TTL policy
    heartbeat_s: PositiveFloat = 30.0  # the broker document's heartbeat
    stats_every_s: PositiveFloat = 60.0  # device documents' summary statistics
    timeout_s: PositiveFloat = 10.0  # one Firestore call; then it counts as unreachable


class RuleSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Threshold rules that run in the broker (issue 5); docs/rules.md explains each knob."""

    enabled: bool = True  # false: rules are neither loaded nor evaluated (the API answers 503)
    # The broker's zone for rule windows and daily budgets when a rule gives no `tz`:
    # "UTC", "+02:00" or an IANA name ("Europe/Paris"); empty: this machine's zone.
    timezone: str = ""
    hold_s: Annotated[float, msgspec.Meta(ge=0)] = 1800.0  # default: manual commands win this long
    stale_after_s: PositiveFloat = 900.0  # default: older readings never act; silence warning
    silence_check_s: PositiveFloat = 5.0  # how often silent sensors are looked for
    command_ttl_s: PositiveFloat = 60.0  # a rule's command is dropped if not sent by then
    history_keep_days: PositiveFloat = 90.0  # rule history lines older than this are deleted


class FirmwareSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_release_bytes: PositiveInt = 256 * 1024  # all files of one release together
    chunk_bytes: Annotated[int, msgspec.Meta(ge=64, le=4096)] = 1024  # at most the device's own
    ack_timeout_s: PositiveFloat = 10.0  # a device silent this long gets the offer again
    max_silences: PositiveInt = 6  # offers without an answer before the device's update fails
    max_parallel: PositiveInt = 20  # devices receiving at once (each chunk is also paced)
    trial_s: PositiveInt = 300  # the new version must be online within this, or it rolls back
    max_boots: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3  # ... and within this many boots
    threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2  # a wave's failed share that halts


class HealthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Readiness (/readyz, docs/operations.md) turns false when a writer has failed to commit
    # for longer than this (the data is held meanwhile) ...
    store_failing_s: PositiveFloat = 10.0
    # ... or when messages are pending and nothing was committed or handled for this long.
    ingest_stuck_s: PositiveFloat = 30.0
    # A background loop that dies is restarted after this delay, doubling up to the max.
    restart_min_s: PositiveFloat = 0.5
    restart_max_s: PositiveFloat = 30.0


class LogSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json: bool = False  # one JSON object per line, with device_id / command_id fields
    # profiling aid: > 0 turns on asyncio's debug mode and logs each callback that held the
    # event loop longer than this many ms (debug mode itself costs CPU; not for production)
    slow_callback_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    gateway: GatewaySettings = GatewaySettings()
    api: ApiSettings = ApiSettings()
    mqtt: MqttSettings = MqttSettings()
    cluster: ClusterSettings = ClusterSettings()
    store: StoreSettings = StoreSettings()
    presence: PresenceSettings = PresenceSettings()
    log: LogSettings = LogSettings()
    commands: CommandSettings = CommandSettings()
    events: EventSettings = EventSettings()
    pairing: PairingSettings = PairingSettings()
    provisioning: ProvisioningSettings = ProvisioningSettings()
    stats: StatsSettings = StatsSettings()
    metrics: MetricsSettings = MetricsSettings()
    dashboard: DashboardSettings = DashboardSettings()
    firestore: FirestoreSettings = FirestoreSettings()
    rules: RuleSettings = RuleSettings()
    firmware: FirmwareSettings = FirmwareSettings()
    health: HealthSettings = HealthSettings()

    @property
    def data_dir(self) -> Path:
        return Path(self.gateway.data_dir).expanduser().resolve()

    @property
    def supervised_mqtt(self) -> bool:
        return not self.mqtt.url and not self.cluster.engine

    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_dir / 'planty.sqlite3'}"


_SECTIONS = tuple(Settings.__struct_fields__)
_SHORTCUTS = {
    "PLANTY_DATA_DIR": ("gateway", "data_dir"),
    "PLANTY_ADMIN_TOKEN": ("gateway", "admin_token"),
}


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        # PLANTY_TEST_* belong to the test suite (bin/test's workers, the test PostgreSQL):
        # its gateways inherit them and must start
        if not key.startswith("PLANTY_") or key == "PLANTY_CONFIG":
            continue
        if key.startswith("PLANTY_TEST_"):
            continue
        if key in _SHORTCUTS:
            section, field = _SHORTCUTS[key]
        else:
            rest = key[len("PLANTY_") :].lower()
            section, _, field = rest.partition("_")
            if section not in _SECTIONS or not field:
                raise ConfigError(
                    f"config: environment variable {key} matches no setting "
                    f"(expected PLANTY_<{'|'.join(s.upper() for s in _SECTIONS)}>_<KEY>)"
                )
        out.setdefault(section, {})[field] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in over.items():
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config: {section} must be a table")
        target.update(values)
    return merged


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the Settings once: file, then environment, then explicit (CLI) overrides."""
    env = os.environ if env is None else env
    path = config_file or env.get("PLANTY_CONFIG")
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config: file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {p} is not valid TOML: {exc}") from exc
    data = _merge(data, _env_overrides(env))
    if env.get("FIRESTORE_EMULATOR_HOST"):  # the Google client libraries' own variable
        data.setdefault("firestore", {}).setdefault("emulator_host", env["FIRESTORE_EMULATOR_HOST"])
    if overrides:
        data = _merge(data, overrides)
    try:
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config: {_readable(str(exc))}") from exc
    _check(settings)
    return settings


def _readable(message: str) -> str:
    # msgspec says "Expected `int` <= 65535, got `70000` - at `$.api.port`"
    text, sep, where = message.rpartition(" - at `$.")
    if not sep:
        return message
    return f"{where.rstrip('`')}: {text.replace('`', '')}"


def _check(s: Settings) -> None:
    try:
        Topics(s.mqtt.topic_prefix)
    except ValueError as exc:
        raise ConfigError(f"config: mqtt.topic_prefix: {exc}") from exc
    if s.mqtt.url and not s.mqtt.url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError("config: mqtt.url: must start with mqtt:// or mqtts://")
    if s.api.port in (s.mqtt.port, s.mqtt.internal_port) and s.supervised_mqtt:
        raise ConfigError("config: api.port: must differ from mqtt.port and mqtt.internal_port")
    if s.supervised_mqtt and s.mqtt.port == s.mqtt.internal_port:
        raise ConfigError("config: mqtt.internal_port: must differ from mqtt.port")
    x509_port = s.mqtt.x509_port if s.mqtt.x509 else 0
    if (
        s.supervised_mqtt
        and x509_port
        and (
            x509_port in (s.mqtt.port, s.mqtt.internal_port, s.api.port)
            or x509_port == s.mqtt.plaintext_loopback_port
        )
    ):
        raise ConfigError(
            f"config: mqtt.x509_port: {x509_port} clashes with another port; set mqtt.x509_port"
        )
    c = s.cluster
    if c.engine:
        for key in ("amqp_urls", "management_urls", "admin_user", "device_endpoints"):
            if not getattr(c, key):
                raise ConfigError(f"config: cluster.{key}: required with cluster.engine")
        if not s.store.url.startswith("postgresql"):
            raise ConfigError("config: store.url: cluster.engine needs a PostgreSQL store.url")
        if c.ca_key_file and not c.ca_file:
            raise ConfigError("config: cluster.ca_key_file: needs cluster.ca_file (its CA)")
    if s.provisioning.default_window_s > s.provisioning.max_window_s:
        raise ConfigError(
            "config: provisioning.default_window_s: must be <= provisioning.max_window_s"
        )
    if s.rules.timezone:
        try:
            LocalClock(s.rules.timezone)
        except ValueError as exc:
            raise ConfigError(f"config: rules.timezone: {exc}") from exc
    if s.store.rollups_keep_days < s.store.readings_keep_days:
        raise ConfigError("config: store.rollups_keep_days: must be >= store.readings_keep_days")
    if s.commands.default_ttl_s > s.commands.max_ttl_s:
        raise ConfigError("config: commands.default_ttl_s: must be <= commands.max_ttl_s")
