# ruff: noqa: PT017 - a property test asserts on whichever way each payload goes
"""The codec's limits (docs/protocol.md, "Limits"): whatever it accepts, the store can hold.

The property tests use the full integer range (Python ints, not capped at 2**53), text
with NUL characters and lone surrogates, numbers past a double, duplicate keys, deep
nesting and broken UTF-8: each payload either decodes into storable values or is refused
with a `ProtocolError` whose kind says why.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planty_broker.protocol import (
    INT64_MAX,
    INT64_MIN,
    MAX_DEPTH,
    MAX_NAME_CHARS,
    MAX_READINGS,
    TS_MAX_MS,
    TS_MIN_MS,
    ErrorKind,
    ProtocolError,
    decode_ack,
    decode_status,
    decode_telemetry,
)
from planty_broker.protocol_ota import decode_ota_ack

DECODERS = (decode_status, decode_telemetry, decode_ack, decode_ota_ack)


def storable(value: Any, depth: int = 0) -> None:
    """What SQLite and PostgreSQL both hold: 64-bit integers, finite floats, no NUL."""
    assert depth <= MAX_DEPTH + 2, "nested too deep"
    if isinstance(value, str):
        assert "\x00" not in value
        value.encode("utf-8")  # no lone surrogate
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        assert INT64_MIN <= value <= INT64_MAX
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            storable(k, depth)
            storable(v, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            storable(v, depth + 1)
    else:
        storable(msgspec.to_builtins(value), depth)


def accepted_is_storable(payload: bytes) -> None:
    for decode in DECODERS:
        try:
            result = decode(payload)
        except ProtocolError as exc:
            assert isinstance(exc.kind, ErrorKind)
            continue
        storable(result)
        if decode is decode_telemetry:
            tel, _dropped = result
            assert tel.ts is None or TS_MIN_MS <= tel.ts <= TS_MAX_MS
            assert len(tel.readings) <= MAX_READINGS
            assert all(0 < len(k) <= MAX_NAME_CHARS for k in tel.readings)


# A JSON writer of our own: duplicate keys, numbers past a double, any escape.
def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


class Raw:
    def __init__(self, text: str) -> None:
        self.text = text


class Obj:
    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


FIELDS = [
    "seq",
    "ts",
    "readings",
    "online",
    "boot",
    "fw",
    "sensors",
    "actuators",
    "interval_s",
    "rssi",
    "heap",
    "uptime_s",
    "ota",
    "id",
    "ok",
    "result",
    "error",
    "t",
    "op",
    "file",
    "offset",
    "last",
    "v",
    "chunk",
    "temperature",
    "x",
]
odd_text = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from(["\x00", "\x7f", "é", "\U0001f331"]),
    max_size=12,
)
odd_numbers = (
    st.integers()  # the full range: 2**63, -2**63 - 1, 2**200 ...
    | st.sampled_from(
        [2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 2**64, TS_MIN_MS - 1, TS_MAX_MS + 1]
    )
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([Raw("1e999"), Raw("-1e999"), Raw("NaN"), Raw("Infinity"), Raw("1e-999")])
    | st.sampled_from([Raw('"\\u0000"'), Raw('"\\ud800"'), Raw('"a\\udc00b"')])
)
leaves = st.none() | st.booleans() | odd_numbers | odd_text
trees = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(st.tuples(st.sampled_from(FIELDS) | odd_text, children), max_size=5).map(Obj)
    ),
    max_leaves=12,
)
messages = st.lists(st.tuples(st.sampled_from(FIELDS), trees), max_size=8).map(Obj)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_any_json_either_decodes_into_storable_values_or_is_refused(msg: Obj) -> None:
    accepted_is_storable(dump(msg).encode())


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.binary(min_size=1, max_size=8), st.integers(min_value=0))
def test_any_bytes_either_decode_into_storable_values_or_are_refused(
    msg: Obj, noise: bytes, where: int
) -> None:
    data = dump(msg).encode()
    at = where % (len(data) + 1)
    accepted_is_storable(data[:at] + noise + data[at:])


@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    accepted_is_storable(data)


@given(st.integers())
def test_seq_and_ts_over_the_full_integer_range(n: int) -> None:
    for payload in (
        f'{{"seq": {n}, "readings": {{"t": 1}}}}',
        f'{{"seq": 1, "ts": {n}, "readings": {{"t": 1}}}}',
    ):
        try:
            tel, _ = decode_telemetry(payload.encode())
        except ProtocolError as exc:
            assert exc.kind is ErrorKind.OUT_OF_RANGE
        else:
            assert 0 <= tel.seq <= INT64_MAX
            assert tel.ts is None or TS_MIN_MS <= tel.ts <= TS_MAX_MS
    try:
        status = decode_status(f'{{"online": true, "boot": {n}}}'.encode())
    except ProtocolError as exc:
        assert exc.kind is ErrorKind.OUT_OF_RANGE
    else:
        assert status.boot == n and INT64_MIN <= n <= INT64_MAX


NEST = 5_000
LIMITS = [
    (b'{"seq": 9223372036854775808, "readings": {}}', decode_telemetry, ErrorKind.OUT_OF_RANGE),
    (b'{"seq": 1, "ts": 99999999999999, "readings": {}}', decode_telemetry, ErrorKind.OUT_OF_RANGE),
    (b'{"seq": 1, "ts": 1000, "readings": {}}', decode_telemetry, ErrorKind.OUT_OF_RANGE),
    (b'{"seq": 1, "readings": {"t": 1e999}}', decode_telemetry, ErrorKind.OUT_OF_RANGE),
    (b'{"seq": 1, "readings": {"t": NaN}}', decode_telemetry, ErrorKind.MALFORMED),
    (b'{"seq": 1, "readings": {"t\\u0000": 1}}', decode_telemetry, ErrorKind.BAD_TEXT),
    (b'{"seq": 1, "readings": {"t": {"v": 1}}}', decode_telemetry, ErrorKind.SCHEMA),
    (b'{"seq": 1, "readings": {"t": [1]}}', decode_telemetry, ErrorKind.SCHEMA),
    (b'{"seq": 1, "readings": {"' + b"n" * 65 + b'": 1}}', decode_telemetry, ErrorKind.OVER_LIMIT),
    (b'{"seq": 1, "readings": {"": 1}}', decode_telemetry, ErrorKind.OVER_LIMIT),
    (
        b'{"seq": 1, "readings": {' + b",".join(b'"r%d": 1' % i for i in range(65)) + b"}}",
        decode_telemetry,
        ErrorKind.OVER_LIMIT,
    ),
    (b'{"seq": 1, "readings": {"t": "\xff"}}', decode_telemetry, ErrorKind.MALFORMED),
    (b'{"seq": 1, "readings": {"t": "\\ud800"}}', decode_telemetry, ErrorKind.MALFORMED),
    (
        b'{"seq": 1, "x": ' + b"[" * NEST + b"]" * NEST + b', "readings": {}}',
        decode_telemetry,
        ErrorKind.OVER_LIMIT,
    ),
    (b'{"online": true, "boot": -9223372036854775809}', decode_status, ErrorKind.OUT_OF_RANGE),
    (b'{"online": true, "fw": "1.0\\u0000"}', decode_status, ErrorKind.BAD_TEXT),
    (b'{"online": true, "sensors": ["a\\u0000"]}', decode_status, ErrorKind.BAD_TEXT),
    (b'{"online": true, "interval_s": 1e400}', decode_status, ErrorKind.OUT_OF_RANGE),
    (
        b'{"online": true, "x": ' + b'{"a":' * NEST + b"1" + b"}" * NEST + b"}",
        decode_status,
        ErrorKind.OVER_LIMIT,
    ),
    (b'{"id": "c-1", "ok": true, "result": {"a": "\\u0000"}}', decode_ack, ErrorKind.BAD_TEXT),
    (b'{"id": "c-1", "ok": true, "result": {"\\u0000": 1}}', decode_ack, ErrorKind.BAD_TEXT),
    (
        b'{"id": "c-1", "ok": true, "result": {"a": 18446744073709551616}}',
        decode_ack,
        ErrorKind.OUT_OF_RANGE,
    ),
    (
        b'{"id": "c-1", "ok": true, "result": {"a": ' + b"[" * 9 + b"]" * 9 + b"}}",
        decode_ack,
        ErrorKind.OVER_LIMIT,
    ),
    (b'{"id": "c-1", "ok": false, "error": "jam\\u0000"}', decode_ack, ErrorKind.BAD_TEXT),
    (b'{"t": 18446744073709551616, "op": "next"}', decode_ota_ack, ErrorKind.OUT_OF_RANGE),
]


@pytest.mark.parametrize(("payload", "decode", "kind"), LIMITS)
def test_limits_are_refused_with_their_kind(payload: bytes, decode: Any, kind: ErrorKind) -> None:
    with pytest.raises(ProtocolError) as e:
        decode(payload)
    assert e.value.kind is kind, str(e.value)


def test_what_stays_valid() -> None:
    tel, dropped = decode_telemetry(
        b'{"seq": 9223372036854775807, "ts": 4102444800000, "readings": {"t": 21, "big": 1e300, "s": "x"}}'
    )
    assert (
        tel.seq == INT64_MAX and tel.ts == TS_MAX_MS and tel.readings == {"t": 21.0, "big": 1e300}
    )
    assert dropped == ["s"]
    # duplicate keys: the last one wins (JSON leaves it open; nothing else changes)
    tel, _ = decode_telemetry(b'{"seq": 1, "seq": 2, "readings": {"t": 1, "t": 2}}')
    assert (tel.seq, tel.readings) == (2, {"t": 2.0})
    ack = decode_ack(
        b'{"id": "c-1", "ok": true, "result": {"a": [[[[[[[1]]]]]]], "n": -9223372036854775808}}'
    )
    assert ack.result is not None and ack.result["n"] == INT64_MIN
