"""The device protocol, version 1: every topic and payload is built and parsed here.

Nothing else in the code base builds a topic string or parses a device payload
(see docs/protocol.md). Decoding is tolerant where PROTOCOL.md asks for it
(unknown status fields and unknown reading names pass through) and strict
everywhere else: a payload that cannot be trusted raises `ProtocolError` with a
`kind` that the stats count per device.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from planty_broker.errors import PlantyError

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "planty/v1"
DEFAULT_MAX_PAYLOAD = 64 * 1024
DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,63}$")

# Reading names with a fixed unit (PROTOCOL.md); other names are kept as they come.
KNOWN_READINGS = ("temperature", "soil_moisture", "light", "humidity", "battery")
BUILTIN_ACTIONS = ("ping", "read", "config")
ACTUATOR_VERBS = ("on", "off", "set")


class Channel(StrEnum):
    """The last topic level: what kind of message travels on it."""

    STATUS = "status"
    TELEMETRY = "telemetry"
    CMD = "cmd"
    ACK = "ack"
    OTA = "ota"  # broker -> device: update offer, chunks, abort (protocol_ota.py)
    OTA_ACK = "ota_ack"  # device -> broker: next / staged / failed / applied


class ErrorKind(StrEnum):
    """Why a device message was refused; each kind is counted per device."""

    MALFORMED = "malformed_payload"  # not JSON, not UTF-8, or not an object
    SCHEMA = "bad_field_type"  # JSON, but a field has the wrong type or is missing
    OUT_OF_RANGE = "out_of_range"  # a number past its limit (64 bits, the ts window, finite)
    BAD_TEXT = "bad_text"  # a NUL character in a string
    OVER_LIMIT = "over_limit"  # too many readings, a name too long, nesting too deep
    OVERSIZE = "oversize"
    BAD_TOPIC = "bad_topic"
    BAD_READING = "bad_reading"  # one reading value was not a number; the others are kept
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_COMMAND = "unknown_command_id"
    ACK_TIMEOUT = "ack_timeout"
    AUTH_REFUSED = "auth_refused"
    DEAD_LETTER = "dead_letter"  # decoded, but the store refused it for good: set aside


class ProtocolError(PlantyError, ValueError):
    """A device message that cannot be used; `kind` says why, for the error counters."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------- limits
#
# What the store can hold, checked at the edge (docs/protocol.md, "Limits"): these were
# never valid v1 (a 65-bit integer, a NUL byte) but used to get as far as the database.

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
TS_MIN_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: a device clock before that is not set
TS_MAX_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
MAX_READINGS = 64  # readings in one telemetry message
MAX_NAME_CHARS = 64  # a reading, sensor or actuator name
MAX_NAMES = 64  # sensors or actuators declared in one status
MAX_TEXT_CHARS = 1024  # any other string field (fw, an ack's id or error, ...)
MAX_DEPTH = 8  # nesting of an ack's `result` (objects and arrays inside it)

_NO_NUL = "^[^\\x00]*$"
Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
Count64 = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
TimestampMs = Annotated[int, msgspec.Meta(ge=TS_MIN_MS, le=TS_MAX_MS)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS, pattern=_NO_NUL)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS, pattern=_NO_NUL)]
Names = Annotated[tuple[Name, ...], msgspec.Meta(max_length=MAX_NAMES)]
# Reading names: lengths checked by msgspec, NUL in decode_telemetry's loop (a regex per key
# would cost the hot path ~2x; measured in bench/poison.py).
ReadingName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
ReadingValue = float | str | bool | None  # an object or array where a number goes: refused
Readings = Annotated[dict[ReadingName, ReadingValue], msgspec.Meta(max_length=MAX_READINGS)]


# ---------------------------------------------------------------- payloads


# The update extension's vocabulary (its codec: protocol_ota.py).
OTA_MAX_FILES = 16
# Never updated over the air: the guard that rolls a bad release back, and the credentials.
OTA_PROTECTED_FILES = frozenset(
    {"boot.py", "planty_boot.py", "planty_boot.mpy", "secrets.json", "planty_ota.json"}
)
OTA_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,31}$")
OTA_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")


class OtaLast(msgspec.Struct, frozen=True, omit_defaults=True):
    """How a device's last update ended (`status.ota.last`); `result` kept as sent."""

    t: Int64 | None = None
    release: Text | None = None
    result: Text | None = None  # applied | rolled_back | failed (newer values pass through)
    reason: Text | None = None


class OtaSupport(msgspec.Struct, frozen=True, omit_defaults=True):
    """`status.ota`: the device takes updates over the air (docs/protocol.md, Updates)."""

    v: Int64 = 1
    chunk: Int64 = 1024
    last: OtaLast | None = None


SHUTDOWN_REASON = "shutdown"


class Status(msgspec.Struct, frozen=True, omit_defaults=True):
    """Retained `status`: `{"online": false}` is the last will, `{"online": false, "reason":
    "shutdown"}` a clean goodbye; the rest is optional."""

    online: bool
    reason: Text | None = None
    fw: Text | None = None
    boot: Int64 | None = None
    sensors: Names = ()
    actuators: Names = ()
    interval_s: float | None = None  # finite: 1e999 is refused (out_of_range)
    rssi: Int64 | None = None
    heap: Int64 | None = None
    uptime_s: Int64 | None = None
    ota: OtaSupport | None = None


class Telemetry(msgspec.Struct, frozen=True, omit_defaults=True):
    """One telemetry message: a sequence number, an optional device clock, named numbers,
    and (v1 addition) the boot counter that `seq` restarts with: (boot, seq) identify the
    message, so a redelivered one is stored once."""

    seq: int
    readings: dict[str, float]
    ts: int | None = None
    boot: int | None = None


class Command(msgspec.Struct, frozen=True, omit_defaults=True):
    """A command the broker sends on `cmd`; `exp` is the unix-ms deadline."""

    id: str
    action: str
    args: dict[str, Any] = {}
    exp: int | None = None


class Ack(msgspec.Struct, frozen=True, omit_defaults=True):
    """A device's answer to a command, on `ack`."""

    id: Text
    ok: bool
    result: dict[str, Any] | None = None  # checked by `_check_tree` (depth, NUL, 64 bits)
    error: Text | None = None


class _RawTelemetry(msgspec.Struct, frozen=True):
    seq: Count64
    readings: Readings
    ts: TimestampMs | None = None
    boot: Count64 | None = None


_status_decoder = msgspec.json.Decoder(Status)
_telemetry_decoder = msgspec.json.Decoder(_RawTelemetry)
_command_decoder = msgspec.json.Decoder(Command)
_ack_decoder = msgspec.json.Decoder(Ack)
_encoder = msgspec.json.Encoder()

# ---------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed device topic."""

    device_id: str
    channel: Channel


_CHANNELS = {c.value: c for c in Channel}


class Topics:
    """Builds and parses topics under one prefix (default `planty/v1`)."""

    __slots__ = ("_base", "_base_len", "prefix")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if (
            not prefix
            or prefix.startswith("/")
            or prefix.endswith("/")
            or "+" in prefix
            or "#" in prefix
        ):
            raise ValueError(
                f"topic prefix {prefix!r} must be non-empty, without wildcards or edge slashes"
            )
        self.prefix = prefix
        self._base = f"{prefix}/devices/"
        self._base_len = len(self._base)

    def device(self, device_id: str, channel: Channel) -> str:
        return f"{self._base}{device_id}/{channel.value}"

    def subscription(self, channel: Channel) -> str:
        """Wildcard subscription for one channel of every device."""
        return f"{self._base}+/{channel.value}"

    def device_tree(self, device_id: str = "%u") -> str:
        """The topic tree a device may use (`%u` for Mosquitto ACL patterns)."""
        return f"{self._base}{device_id}/#"

    def parse(self, topic: str) -> Topic:
        if not topic.startswith(self._base):
            raise ProtocolError(ErrorKind.BAD_TOPIC, f"topic {topic!r} is outside {self._base}")
        rest = topic[self._base_len :]
        device_id, sep, channel = rest.partition("/")
        if not sep or "/" in channel:
            raise ProtocolError(
                ErrorKind.BAD_TOPIC, f"topic {topic!r} is not devices/<id>/<channel>"
            )
        ch = _CHANNELS.get(channel)  # a dict lookup: Channel(x) costs ~2 us per message
        if ch is None:
            raise ProtocolError(ErrorKind.BAD_TOPIC, f"unknown channel {channel!r}")
        return Topic(device_id, ch)


def valid_device_id(device_id: str) -> bool:
    return DEVICE_ID_RE.fullmatch(device_id) is not None


# ---------------------------------------------------------------- codec


def _check_size(payload: bytes, max_bytes: int) -> None:
    if len(payload) > max_bytes:
        raise ProtocolError(
            ErrorKind.OVERSIZE, f"payload of {len(payload)} bytes exceeds {max_bytes}"
        )


_RANGE_RE = re.compile(r"^(Number out of range|Expected `(int|float)` [<>]=?)")
_LIMIT_RE = re.compile(r"^Expected `(str|object|array)` of length")


def validation_kind(message: str) -> ErrorKind:
    """The error kind of a msgspec validation message (the limits above are Meta constraints)."""
    if _RANGE_RE.match(message):
        return ErrorKind.OUT_OF_RANGE
    if message.startswith("Expected `str` matching regex"):
        return ErrorKind.BAD_TEXT
    if _LIMIT_RE.match(message):
        return ErrorKind.OVER_LIMIT
    return ErrorKind.SCHEMA


def decode_json(decoder: msgspec.json.Decoder[Any], payload: bytes, what: str) -> Any:
    """Decode with `decoder`; every failure becomes a `ProtocolError` with its kind."""
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ProtocolError(validation_kind(str(exc)), f"{what}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorKind.MALFORMED, f"{what}: {exc}") from None
    except RecursionError:  # nesting deeper than the interpreter's stack, even in an unknown field
        raise ProtocolError(ErrorKind.OVER_LIMIT, f"{what}: JSON nested too deep") from None


def _check_tree(value: Any, what: str, depth: int = 0) -> None:
    """Free-form JSON (an ack's `result`): nesting, NUL characters, 64-bit integers."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ProtocolError(ErrorKind.BAD_TEXT, f"{what}: a string holds a NUL character")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ProtocolError(ErrorKind.OUT_OF_RANGE, f"{what}: integer outside 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):  # msgspec refuses these already; kept for other callers
            raise ProtocolError(ErrorKind.OUT_OF_RANGE, f"{what}: number is not finite")
    elif depth >= MAX_DEPTH:
        raise ProtocolError(ErrorKind.OVER_LIMIT, f"{what}: nested deeper than {MAX_DEPTH}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_tree(key, what, depth)
            _check_tree(item, what, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_tree(item, what, depth + 1)


def decode_status(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> Status:
    _check_size(payload, max_bytes)
    if not payload:  # an empty retained message clears status: treat as offline
        return Status(online=False)
    status: Status = decode_json(_status_decoder, payload, "status")
    return status


def decode_telemetry(
    payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD
) -> tuple[Telemetry, list[str]]:
    """Decode telemetry; returns it with the names of readings dropped for a non-number value."""
    _check_size(payload, max_bytes)
    raw: _RawTelemetry = decode_json(_telemetry_decoder, payload, "telemetry")
    readings: dict[str, float] = {}
    dropped: list[str] = []
    for name, value in raw.readings.items():
        if "\x00" in name:
            raise ProtocolError(ErrorKind.BAD_TEXT, "telemetry: a reading name holds a NUL")
        if isinstance(value, float):  # msgspec decodes every JSON number here as a finite float
            readings[name] = value
        else:
            dropped.append(name)
    return Telemetry(seq=raw.seq, readings=readings, ts=raw.ts, boot=raw.boot), dropped


def decode_ack(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> Ack:
    _check_size(payload, max_bytes)
    ack: Ack = decode_json(_ack_decoder, payload, "ack")
    if ack.result is not None:
        _check_tree(ack.result, "ack result")
    return ack


def decode_command(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> Command:
    """Used by the simulator (the device side)."""
    _check_size(payload, max_bytes)
    cmd: Command = decode_json(_command_decoder, payload, "cmd")
    _check_tree(cmd.args, "cmd args")
    return cmd


def encode(msg: Status | Telemetry | Command | Ack) -> bytes:
    return _encoder.encode(msg)


def offline_will() -> bytes:
    """The retained last will every device sets at CONNECT."""
    return encode(Status(online=False))


def goodbye() -> bytes:
    """The retained status a device publishes itself before a clean shutdown."""
    return encode(Status(online=False, reason=SHUTDOWN_REASON))


def split_action(action: str) -> tuple[str | None, str]:
    """`pump.on` -> ("pump", "on"); `ping` -> (None, "ping")."""
    actuator, dot, verb = action.rpartition(".")
    return (actuator, verb) if dot else (None, action)


# ---------------------------------------------------------------- provisioning (v1 addition)
#
# Additive to protocol v1 (docs/protocol.md, "Provisioning by claim" and "Credential
# rotation"): devices that do not use them see no change.

CLAIM_SLOT_PREFIX = "planty-claim-"
CLAIM_SLOT_RE = re.compile(r"^planty-claim-(0|[1-9][0-9]{0,3})$")
CREDENTIAL_TYPES = ("token", "x509")
_REQ_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_DEVICE_TOKEN_CHARS = 22  # a device-chosen token: at least 128 bits in URL-safe base64


def claim_slot_name(slot: int) -> str:
    """The MQTT username of one claim slot: `planty-claim-<n>`."""
    return f"{CLAIM_SLOT_PREFIX}{slot}"


class ClaimRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """A factory-fresh device asks for its own credential (on `provision/<slot>/request`).

    `req` is the device's request id, echoed in the reply; a repeat of the same
    `serial` + `req` (lost reply) gets the same answer. `token`, when given, is the
    device's own secret (>= 128 random bits): the reply then carries no secret at all.
    """

    req: str
    serial: str
    type: str = "token"
    id: str | None = None
    name: Text | None = None
    token: str | None = None


class ClaimReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """The broker's answer on `provision/<slot>/reply`; `ok: false` carries an `error` code."""

    req: str
    ok: bool
    id: str | None = None
    token: str | None = None
    cert_pem: str | None = None
    key_pem: str | None = None
    host: str | None = None
    port: int | None = None
    error: str | None = None
    message: str | None = None


class CredentialDelivery(msgspec.Struct, frozen=True, omit_defaults=True):
    """A new credential sent to a device inside a `config` command (`args.credential`)."""

    id: str
    type: str
    token: str | None = None
    cert_pem: str | None = None
    key_pem: str | None = None
    port: int | None = None


_claim_request_decoder = msgspec.json.Decoder(ClaimRequest)
_claim_reply_decoder = msgspec.json.Decoder(ClaimReply)


def provision_topic(prefix: str, slot_name: str, which: str) -> str:
    """`<prefix>/provision/<slot>/request` or `.../reply`."""
    if which not in ("request", "reply"):
        raise ValueError(f"which must be 'request' or 'reply', not {which!r}")
    return f"{prefix}/provision/{slot_name}/{which}"


def provision_subscription(prefix: str) -> str:
    """What the gateway subscribes to: every slot's requests."""
    return f"{prefix}/provision/+/request"


def parse_provision_topic(prefix: str, topic: str) -> str | None:
    """The claim slot of a request topic, None if the topic is not a provisioning request."""
    base = f"{prefix}/provision/"
    if not topic.startswith(base) or not topic.endswith("/request"):
        return None
    slot = topic[len(base) : -len("/request")]
    return slot if CLAIM_SLOT_RE.fullmatch(slot) else None


def decode_claim_request(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> ClaimRequest:
    """Decode and check a claim request; `ProtocolError` if it cannot be used."""
    _check_size(payload, max_bytes)
    req: ClaimRequest = decode_json(_claim_request_decoder, payload, "claim request")
    if not _REQ_RE.fullmatch(req.req):
        raise ProtocolError(ErrorKind.SCHEMA, "claim request: req must be 1-64 of A-Za-z0-9._-")
    if not 1 <= len(req.serial) <= 64 or not req.serial.isprintable():
        raise ProtocolError(ErrorKind.SCHEMA, "claim request: serial must be 1-64 printable chars")
    if req.type not in CREDENTIAL_TYPES:
        raise ProtocolError(ErrorKind.SCHEMA, "claim request: type must be 'token' or 'x509'")
    if req.id is not None and not valid_device_id(req.id):
        raise ProtocolError(ErrorKind.SCHEMA, f"claim request: {req.id!r} is not a valid device id")
    if req.token is not None and (
        req.type != "token"
        or len(req.token) < MIN_DEVICE_TOKEN_CHARS
        or len(req.token) > 256
        or not req.token.isascii()
        or not req.token.isprintable()
    ):
        raise ProtocolError(
            ErrorKind.SCHEMA,
            f"claim request: token must be {MIN_DEVICE_TOKEN_CHARS}-256 printable ASCII "
            "characters, with type 'token'",
        )
    return req


def decode_claim_reply(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> ClaimReply:
    """Used by the simulator (the device side)."""
    _check_size(payload, max_bytes)
    reply: ClaimReply = decode_json(_claim_reply_decoder, payload, "claim reply")
    return reply


def encode_provisioning(msg: ClaimRequest | ClaimReply) -> bytes:
    return _encoder.encode(msg)


def credential_config_args(delivery: CredentialDelivery) -> dict[str, Any]:
    """`args` of the `config` command that hands a device its rotated credential."""
    return {"credential": msgspec.to_builtins(delivery)}


def credential_from_args(args: dict[str, Any]) -> CredentialDelivery | None:
    """The credential inside `config` args (device side); None if there is none.

    Raises `ProtocolError` when a credential is there but unusable.
    """
    raw = args.get("credential")
    if raw is None:
        return None
    try:
        delivery = msgspec.convert(raw, CredentialDelivery)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorKind.SCHEMA, f"config credential: {exc}") from exc
    if delivery.type == "token" and not delivery.token:
        raise ProtocolError(ErrorKind.SCHEMA, "config credential: a token credential needs token")
    if delivery.type == "x509" and not (delivery.cert_pem and delivery.key_pem):
        raise ProtocolError(ErrorKind.SCHEMA, "config credential: x509 needs cert_pem and key_pem")
    if delivery.type not in CREDENTIAL_TYPES:
        raise ProtocolError(ErrorKind.SCHEMA, f"config credential: unknown type {delivery.type!r}")
    return delivery
