"""Ports nobody asked for: picked free once, recorded in the data folder, reused."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from planty_broker.mqttserver.errors import PortInUseError
from planty_broker.mqttserver.layout import MosquittoLayout
from planty_broker.mqttserver.ports import (
    LEGACY_INTERNAL_PORT,
    LOWEST_PICK,
    assign_ports,
    port_free,
    ports_path,
)
from tests.conftest import free_port


def layout(tmp_path: Path, **kw: object) -> MosquittoLayout:
    base: dict[str, object] = {"data_dir": tmp_path, "port": 8883, "internal_port": 0,
                               "bind": "127.0.0.1", "pick_x509": True}
    return MosquittoLayout(**{**base, **kw})  # type: ignore[arg-type]


def test_picked_ports_are_free_distinct_recorded_and_reused(tmp_path: Path) -> None:
    first = assign_ports(layout(tmp_path))
    assert first.internal_port and first.x509_port and not first.pick_x509
    assert len({first.port, first.internal_port, first.x509_port}) == 3
    assert first.internal_port >= LOWEST_PICK and first.x509_port >= LOWEST_PICK
    recorded = json.loads(ports_path(tmp_path).read_text())
    assert recorded == {"mqtt.internal_port": first.internal_port,
                        "mqtt.x509_port": first.x509_port}
    again = assign_ports(layout(tmp_path))
    assert (again.internal_port, again.x509_port) == (first.internal_port, first.x509_port)


def test_set_ports_are_kept_and_nothing_is_recorded(tmp_path: Path) -> None:
    fixed = layout(tmp_path, internal_port=18830, x509_port=8884, pick_x509=False)
    assert assign_ports(fixed) is fixed
    assert not ports_path(tmp_path).exists()


def test_a_recorded_internal_port_taken_meanwhile_is_replaced(tmp_path: Path) -> None:
    first = assign_ports(layout(tmp_path, pick_x509=False))
    with socket.socket() as s:
        s.bind(("127.0.0.1", first.internal_port))
        s.listen()
        again = assign_ports(layout(tmp_path, pick_x509=False))
    assert again.internal_port != first.internal_port
    assert json.loads(ports_path(tmp_path).read_text())["mqtt.internal_port"] == (
        again.internal_port
    )


def test_a_recorded_x509_port_taken_meanwhile_stops_the_start_naming_the_setting(
    tmp_path: Path,
) -> None:
    first = assign_ports(layout(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", first.x509_port))
        s.listen()
        with pytest.raises(PortInUseError, match=r"mqtt\.x509_port .*PLANTY_MQTT_X509_PORT"):
            assign_ports(layout(tmp_path))
        # A Mosquitto of ours still holding it (adopted) is fine.
        assert assign_ports(layout(tmp_path), adopting=True).x509_port == first.x509_port


def test_a_broken_record_is_ignored(tmp_path: Path) -> None:
    ports_path(tmp_path).write_text("{not json")
    assert assign_ports(layout(tmp_path)).internal_port


def old_data_folder(tmp_path: Path, restored: bool = False) -> None:
    """A data folder a version before ports.json ran on: its CA and Mosquitto's config.

    `restored`: from a backup, which holds the CA but not Mosquitto's generated folder.
    """
    files = [layout(tmp_path).pki_dir / "ca.pem"]
    if not restored:
        files.append(layout(tmp_path).conf_path)
    for path in files:
        path.parent.mkdir(parents=True)
        path.write_text("# written by an earlier version\n")


def port_with_the_next_free() -> int:
    for _ in range(200):
        port = free_port()
        if port < 65535 and port_free("127.0.0.1", port + 1):
            return port
    raise AssertionError("no two free ports in a row")


def test_a_new_data_folder_picks(tmp_path: Path) -> None:
    picked = assign_ports(layout(tmp_path, port=free_port()))
    assert picked.x509_port >= LOWEST_PICK and picked.internal_port >= LOWEST_PICK


@pytest.mark.parametrize("restored", [False, True], ids=["in-place", "restored-backup"])
def test_an_old_data_folder_keeps_mqtt_port_plus_one_and_the_old_internal_port(
    tmp_path: Path, restored: bool
) -> None:
    old_data_folder(tmp_path, restored)
    device_port = port_with_the_next_free()
    kept = assign_ports(layout(tmp_path, port=device_port))
    assert kept.x509_port == device_port + 1  # what devices in the field were given
    if port_free("127.0.0.1", LEGACY_INTERNAL_PORT):
        assert kept.internal_port == LEGACY_INTERNAL_PORT
    recorded = json.loads(ports_path(tmp_path).read_text())
    assert recorded == {"mqtt.internal_port": kept.internal_port,
                        "mqtt.x509_port": device_port + 1}
    # Recorded from now on: a later start keeps them, whatever mqtt.port becomes.
    again = assign_ports(layout(tmp_path, port=device_port + 7))
    assert again.x509_port == device_port + 1


def test_an_old_data_folder_whose_internal_port_is_taken_picks_another(tmp_path: Path) -> None:
    old_data_folder(tmp_path)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", LEGACY_INTERNAL_PORT))
            s.listen()
        except OSError:
            pass  # taken anyway (another gateway on this machine)
        kept = assign_ports(layout(tmp_path, port=port_with_the_next_free()))
    assert kept.internal_port != LEGACY_INTERNAL_PORT


def test_an_old_data_folder_whose_x509_port_is_taken_stops_the_start(tmp_path: Path) -> None:
    old_data_folder(tmp_path)
    device_port = port_with_the_next_free()
    with socket.socket() as s:
        s.bind(("127.0.0.1", device_port + 1))
        s.listen()
        with pytest.raises(PortInUseError, match=r"mqtt\.x509_port .*mqtt\.port \+ 1"):
            assign_ports(layout(tmp_path, port=device_port))
    assert not ports_path(tmp_path).exists()  # nothing recorded: the next start tries again
