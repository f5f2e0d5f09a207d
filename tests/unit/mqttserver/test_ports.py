"""Ports nobody asked for: picked free once, recorded in the data folder, reused."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from planty_broker.mqttserver.errors import PortInUseError
from planty_broker.mqttserver.layout import MosquittoLayout
from planty_broker.mqttserver.ports import LOWEST_PICK, assign_ports, ports_path


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
