"""Rendering of mosquitto.conf, the password file and the ACL file; atomic writes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from planty_broker.config import load_settings
from planty_broker.mqttserver.atomic import write_atomic
from planty_broker.mqttserver.files import (
    CIPHERS_TLS12,
    CIPHERS_TLS13,
    FileOwner,
    render_acl,
    render_conf,
    render_passwords,
    write_mosquitto_files,
)
from planty_broker.mqttserver.layout import GATEWAY_USERNAME, MosquittoLayout, MqttAccount
from planty_broker.mqttserver.passwords import hash_token
from planty_broker.mqttserver.pki import Pki, ensure_pki
from planty_broker.ports.device_authority import AclGrant

H = hash_token("t")


def layout(tmp_path: Path, **kw: object) -> MosquittoLayout:
    return MosquittoLayout(data_dir=tmp_path, port=8883, internal_port=18830, **kw)  # type: ignore[arg-type]


def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    return Pki(d, d / "ca.pem", d / "ca.key", d / "server.pem", d / "server.key", ("localhost",))


def listeners(conf: str) -> list[tuple[str, list[str]]]:
    """Each `listener` line with the option lines that follow it."""
    out: list[tuple[str, list[str]]] = []
    for line in conf.splitlines():
        if line.startswith("listener "):
            out.append((line, []))
        elif out and line and not line.startswith("#"):
            out[-1][1].append(line)
    return out


def test_conf_has_the_security_and_durability_settings(tmp_path: Path) -> None:
    conf = render_conf(layout(tmp_path, max_queued_messages=123_456), pki(tmp_path))
    lines = conf.splitlines()
    for wanted in (
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {tmp_path}/mosquitto/passwd",
        f"acl_file {tmp_path}/mosquitto/acl",
        f"pid_file {tmp_path}/mosquitto/mosquitto.pid",
        "persistence true",
        f"persistence_location {tmp_path}/mosquitto/",
        "max_queued_messages 123456",
        "max_inflight_messages 1000",
        f"log_dest file {tmp_path}/mosquitto/mosquitto.log",
    ):
        assert wanted in lines
    assert not any(line.startswith("user ") for line in lines)  # only when root


def test_every_listener_forces_client_id_and_plaintext_ones_are_loopback(tmp_path: Path) -> None:
    for extra in (0, 18840):
        conf = render_conf(layout(tmp_path, plaintext_loopback_port=extra), pki(tmp_path))
        found = listeners(conf)
        assert len(found) == (3 if extra else 2)
        for line, options in found:
            assert "use_username_as_clientid true" in options
            if "certfile" not in " ".join(options):
                assert line.endswith(" 127.0.0.1"), line
        tls_line, tls_options = found[0]
        assert tls_line == "listener 8883 0.0.0.0"
        assert "tls_version tlsv1.2" in tls_options
        assert f"ciphers {CIPHERS_TLS12}" in tls_options
        assert f"ciphers_tls1.3 {CIPHERS_TLS13}" in tls_options
        assert f"keyfile {tmp_path}/mosquitto/server.key" in tls_options  # its own copy
        assert found[-1][0] == "listener 18830 127.0.0.1"  # internal last: ready means all open
        assert (f"listener {extra} 127.0.0.1" in conf) == bool(extra)


def test_conf_runs_as_the_given_user(tmp_path: Path) -> None:
    assert "\nuser mosquitto\n" in render_conf(layout(tmp_path), pki(tmp_path), "mosquitto")


def test_acl_confines_devices_and_grants_accounts(tmp_path: Path) -> None:
    accounts = [
        MqttAccount(GATEWAY_USERNAME, H),
        MqttAccount("observer", H, (AclGrant("read", "planty/#"),)),
    ]
    acl = render_acl(layout(tmp_path, topic_prefix="acme/v2"), accounts).splitlines()
    assert "pattern readwrite acme/v2/devices/%u/#" in acl
    assert [line for line in acl if line.startswith("pattern")] == [
        "pattern readwrite acme/v2/devices/%u/#"
    ]
    gw = acl.index(f"user {GATEWAY_USERNAME}")
    assert acl[gw + 1 : gw + 3] == ["topic readwrite #", "topic read $SYS/#"]
    obs = acl.index("user observer")
    assert acl[obs + 1] == "topic read planty/#"


def test_password_file_lists_accounts_then_devices() -> None:
    text = render_passwords({"dev-b": H, "dev-a": H}, [MqttAccount(GATEWAY_USERNAME, H)])
    names = [line.split(":", 1)[0] for line in text.splitlines()]
    assert names == [GATEWAY_USERNAME, "dev-a", "dev-b"]
    assert all(line.split(":", 1)[1] == H for line in text.splitlines())


@pytest.mark.parametrize(
    ("devices", "match"),
    [
        ({GATEWAY_USERNAME: H}, "reserved"),
        ({"a:b": H}, "not allowed"),
        ({"a/b": H}, "not allowed"),
        ({"a+": H}, "not allowed"),
        ({"a#": H}, "not allowed"),
        ({"": H}, "not allowed"),
        ({"dev-a": "plaintext"}, "no valid"),
        ({"dev-a": H + "\nevil:" + H}, "no valid"),
    ],
)
def test_password_file_refuses_unsafe_entries(devices: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        render_passwords(devices, [MqttAccount(GATEWAY_USERNAME, H)])
    assert H not in str(info.value)  # never echo a hash


def test_files_are_written_private_and_only_when_changed(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    lay.directory.mkdir()
    accounts = [MqttAccount(GATEWAY_USERNAME, H)]
    real = ensure_pki(tmp_path / "pki", ["localhost"])
    assert write_mosquitto_files(lay, real, {"dev-a": H}, accounts, FileOwner())
    for path in (lay.conf_path, lay.password_path, lay.acl_path, lay.tls_key_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert lay.tls_key_path.read_text() == real.key_path.read_text()
    assert "dev-a:" in lay.password_path.read_text()
    # Same conf again: reported unchanged; new devices still land in the password file.
    assert not write_mosquitto_files(lay, real, {"dev-b": H}, accounts, FileOwner())
    assert "dev-b:" in lay.password_path.read_text()
    assert "dev-a:" not in lay.password_path.read_text()
    # Only what Mosquitto needs: never the CA key (pki/ is the gateway's alone, 0700).
    assert sorted(p.name for p in lay.directory.iterdir()) == [
        "acl",
        "mosquitto.conf",
        "passwd",
        "server.key",
        "server.pem",
    ]
    assert stat.S_IMODE(real.directory.stat().st_mode) == 0o700


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old content that is longer")
    path.chmod(0o644)
    write_atomic(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_layout_from_settings(tmp_path: Path) -> None:
    settings = load_settings(
        env={},
        overrides={
            "gateway": {"data_dir": str(tmp_path)},
            "mqtt": {
                "port": 9883,
                "internal_port": 19830,
                "bind": "192.0.2.7",
                "public_host": "gw.example",
                "plaintext_loopback_port": 11883,
                "max_queued_messages": 77,
                "max_inflight": 55,
                "topic_prefix": "acme/v1",
            },
        },
    )
    lay = MosquittoLayout.from_settings(settings)
    assert (lay.port, lay.internal_port, lay.plaintext_loopback_port) == (9883, 19830, 11883)
    assert (lay.max_queued_messages, lay.max_inflight_messages) == (77, 55)
    assert lay.topic_prefix == "acme/v1"
    assert lay.hostnames == ("gw.example", "192.0.2.7")
    assert lay.directory == tmp_path / "mosquitto"
    assert lay.max_packet_size >= settings.mqtt.max_payload_bytes * 2  # oversize reaches us


def test_the_incremental_password_file_renders_as_from_scratch_and_checks_changes() -> None:
    from planty_broker.mqttserver import files
    from planty_broker.mqttserver.files import PasswordFile, render_passwords

    accounts = [MqttAccount(GATEWAY_USERNAME, hash_token("gw-secret-0123456789abcdef"))]
    devices = {f"dev-{n:03d}": hash_token(f"token-{n}") for n in range(50)}
    table = PasswordFile()
    assert table.render(devices, accounts) == render_passwords(devices, accounts)
    checked: list[str] = []
    original = files._check_entry

    def spy(username: str, password_hash: str, what: str) -> None:
        checked.append(username)
        original(username, password_hash, what)

    files._check_entry = spy  # type: ignore[assignment]
    try:
        devices["dev-007"] = hash_token("rotated")
        devices["dev-new"] = hash_token("new")
        del devices["dev-010"]
        text = table.render(devices, accounts)
        assert sorted(checked) == ["dev-007", "dev-new", GATEWAY_USERNAME]  # not the other 48
        assert text == render_passwords(devices, accounts)
        # a bad change is refused and the cache keeps only what passed
        with pytest.raises(ValueError, match="dev-bad"):
            table.render({**devices, "dev-bad": "plain-text"}, accounts)
        with pytest.raises(ValueError, match="reserved"):
            table.render({**devices, GATEWAY_USERNAME: hash_token("x")}, accounts)
        assert table.render(devices, accounts) == text
    finally:
        files._check_entry = original  # type: ignore[assignment]
