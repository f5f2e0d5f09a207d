"""The edge codec: every topic and payload, good and bad."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planty_broker.protocol import (
    INT64_MAX,
    TS_MAX_MS,
    TS_MIN_MS,
    Ack,
    Channel,
    Command,
    ErrorKind,
    ProtocolError,
    Status,
    Telemetry,
    Topics,
    decode_ack,
    decode_command,
    decode_status,
    decode_telemetry,
    encode,
    offline_will,
    split_action,
    valid_device_id,
)

T = Topics("planty/v1")


def test_topics_round_trip() -> None:
    topic = T.device("greenhouse-1", Channel.TELEMETRY)
    assert topic == "planty/v1/devices/greenhouse-1/telemetry"
    parsed = T.parse(topic)
    assert (parsed.device_id, parsed.channel) == ("greenhouse-1", Channel.TELEMETRY)
    assert T.subscription(Channel.STATUS) == "planty/v1/devices/+/status"
    assert T.device_tree() == "planty/v1/devices/%u/#"


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/devices/a/telemetry",
        "planty/v1/devices/abc",
        "planty/v1/devices/abc/telemetry/x",
        "planty/v1/devices/abc/nope",
        "planty/v1/devices/",
    ],
)
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(ProtocolError) as e:
        T.parse(topic)
    assert e.value.kind is ErrorKind.BAD_TOPIC


@pytest.mark.parametrize("prefix", ["", "/a", "a/", "a/+/b", "a/#"])
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Topics(prefix)


def test_protocol_md_examples_decode() -> None:
    status = decode_status(
        b'{"online": true, "fw": "1.4.2", "boot": 17, "sensors": ["temperature",'
        b'"soil_moisture","light"], "actuators": ["pump","lamp"], "interval_s": 60, "rssi": -61}'
    )
    assert status.online and status.actuators == ("pump", "lamp") and status.interval_s == 60
    tel, dropped = decode_telemetry(
        b'{"seq": 42, "ts": 1764240000123, "readings": {"temperature": 21.5,'
        b' "soil_moisture": 0.43, "light": 812}}'
    )
    assert (
        tel.seq == 42 and tel.ts == 1764240000123 and tel.readings["light"] == 812.0 and not dropped
    )
    ack = decode_ack(b'{"id": "c-01JD", "ok": false, "error": "pump jammed"}')
    assert not ack.ok and ack.error == "pump jammed"
    cmd = decode_command(
        b'{"id": "c-01JD", "action": "pump.on", "args": {"seconds": 10}, "exp": 1764240060000}'
    )
    assert cmd.args == {"seconds": 10}


def test_telemetry_boot_is_optional_and_never_negative() -> None:
    """`boot` (v1 addition) makes (boot, seq) the reading's identity; older firmware omits it."""
    tel, _ = decode_telemetry(b'{"seq": 42, "boot": 17, "readings": {"light": 812}}')
    assert (tel.boot, tel.seq) == (17, 42)
    assert decode_telemetry(b'{"seq": 42, "readings": {}}')[0].boot is None
    assert decode_telemetry(encode(Telemetry(3, {"t": 1.0}, None, 9)))[0].boot == 9
    for bad, kind in ((b"-1", ErrorKind.OUT_OF_RANGE), (b'"7"', ErrorKind.SCHEMA)):
        with pytest.raises(ProtocolError) as err:
            decode_telemetry(b'{"seq": 1, "boot": ' + bad + b', "readings": {}}')
        assert err.value.kind is kind


def test_last_will_is_offline_status() -> None:
    assert json.loads(offline_will()) == {"online": False}
    assert decode_status(b"").online is False  # a cleared retained status


def test_unknown_fields_and_readings_pass_through() -> None:
    status = decode_status(b'{"online": true, "new_field_from_fw_2": {"x": 1}}')
    assert status.online
    tel, _ = decode_telemetry(b'{"seq": 1, "readings": {"co2": 415}}')
    assert tel.readings == {"co2": 415.0} and tel.ts is None


def test_non_numeric_reading_is_dropped_and_reported_rest_kept() -> None:
    tel, dropped = decode_telemetry(
        b'{"seq": 1, "readings": {"light": "bright", "temperature": 20, "x": true}}'
    )
    assert tel.readings == {"temperature": 20.0}
    assert sorted(dropped) == ["light", "x"]


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"not json", ErrorKind.MALFORMED),
        (b"{", ErrorKind.MALFORMED),
        (b"[1,2]", ErrorKind.SCHEMA),
        (b'{"readings": {}}', ErrorKind.SCHEMA),
        (b'{"seq": "1", "readings": {}}', ErrorKind.SCHEMA),
        (b'{"seq": -1, "readings": {}}', ErrorKind.OUT_OF_RANGE),
        (b'{"seq": 1, "readings": [1]}', ErrorKind.SCHEMA),
        (b'{"seq": 1, "readings": {}, "ts": "yesterday"}', ErrorKind.SCHEMA),
        (b"\xff\xfe", ErrorKind.MALFORMED),
    ],
)
def test_malformed_telemetry(payload: bytes, kind: ErrorKind) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_telemetry(payload)
    assert e.value.kind is kind


def test_oversize() -> None:
    big = b'{"seq": 1, "readings": {}, "pad": "' + b"x" * 70_000 + b'"}'
    with pytest.raises(ProtocolError) as e:
        decode_telemetry(big)
    assert e.value.kind is ErrorKind.OVERSIZE
    decode_telemetry(big, max_bytes=100_000)


@given(st.binary(max_size=300))
def test_any_bytes_either_decode_or_raise_protocol_error(data: bytes) -> None:
    for decode in (decode_status, decode_ack, decode_command):
        try:
            decode(data)
        except ProtocolError:
            pass
    try:
        decode_telemetry(data)
    except ProtocolError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["seq", "ts", "readings", "online", "id", "ok", "x"]), json_values
    )
)
def test_any_json_object_either_decodes_or_raises_protocol_error(obj: dict[str, object]) -> None:
    data = json.dumps(obj).encode()
    try:
        tel, dropped = decode_telemetry(data)
        assert all(isinstance(v, float) for v in tel.readings.values())
    except ProtocolError:
        pass
    try:
        decode_ack(data)
    except ProtocolError:
        pass


@given(
    st.integers(min_value=0, max_value=INT64_MAX),
    st.dictionaries(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20),
        st.floats(allow_nan=False, allow_infinity=False),
        max_size=8,
    ),
    st.none() | st.integers(min_value=TS_MIN_MS, max_value=TS_MAX_MS),
)
def test_telemetry_round_trip(seq: int, readings: dict[str, float], ts: int | None) -> None:
    tel, dropped = decode_telemetry(encode(Telemetry(seq=seq, readings=readings, ts=ts)))
    assert tel == Telemetry(seq=seq, readings=readings, ts=ts) and not dropped


def test_encode_omits_defaults() -> None:
    assert json.loads(encode(Ack(id="c1", ok=True))) == {"id": "c1", "ok": True}
    assert json.loads(encode(Command(id="c1", action="ping"))) == {"id": "c1", "action": "ping"}
    assert json.loads(encode(Status(online=True, interval_s=60))) == {
        "online": True,
        "interval_s": 60,
    }


@pytest.mark.parametrize(
    ("device_id", "ok"),
    [
        ("greenhouse-1", True),
        ("abc", True),
        ("ab", False),
        ("-abc", False),
        ("ABC", False),
        ("a" * 65, False),
        ("a/b", False),
        ("a+b", False),
    ],
)
def test_device_ids(device_id: str, ok: bool) -> None:
    assert valid_device_id(device_id) is ok


def test_split_action() -> None:
    assert split_action("pump.on") == ("pump", "on")
    assert split_action("ping") == (None, "ping")


def test_protocol_md_lists_every_error_kind() -> None:
    """Firmware authors read the error counters by these names: each one is documented."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "protocol.md").read_text()
    missing = [k.value for k in ErrorKind if f"| `{k.value}` |" not in text]
    assert not missing, f"docs/protocol.md does not list the error kinds {missing}"
