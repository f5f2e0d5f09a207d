"""OS side of the supervisor: binary lookup, port checks, pid checks, log tails."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import pytest

from planty_broker.mqttserver.errors import (
    ListenerUnavailableError,
    MosquittoNotInstalledError,
    PortInUseError,
)
from planty_broker.mqttserver.layout import MosquittoLayout
from planty_broker.mqttserver.process import (
    check_ports_free,
    describe_exit,
    find_adoptable,
    find_mosquitto,
    log_tail,
)
from planty_broker.mqttserver.supervisor import MosquittoSupervisor
from tests.conftest import free_port


def layout(tmp_path: Path, **kw: object) -> MosquittoLayout:
    return MosquittoLayout(
        data_dir=tmp_path / "data",
        port=free_port(),
        internal_port=free_port(),
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("binary", ["no-such-mosquitto-here", "/nonexistent/bin/mosquitto"])
def test_missing_mosquitto_says_how_to_install_it(binary: str) -> None:
    with pytest.raises(MosquittoNotInstalledError) as info:
        find_mosquitto(binary)
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install mosquitto" in message
    assert binary in message


async def test_supervisor_fails_on_missing_binary_before_touching_disk(tmp_path: Path) -> None:
    async def users() -> Mapping[str, str]:
        raise AssertionError("must not be asked")

    lay = layout(tmp_path, mosquitto_bin="/nonexistent/mosquitto")
    with pytest.raises(MosquittoNotInstalledError, match="apt-get install mosquitto"):
        async with MosquittoSupervisor(lay, users):
            pass
    assert not lay.data_dir.exists()


def test_ports_free_passes_and_taken_port_names_the_setting(tmp_path: Path) -> None:
    lay = layout(tmp_path, plaintext_loopback_port=free_port())
    check_ports_free(lay)
    with socket.socket() as other:
        other.bind(("127.0.0.1", lay.plaintext_loopback_port))
        other.listen()
        with pytest.raises(PortInUseError) as info:
            check_ports_free(lay)
    assert info.value.setting == "mqtt.plaintext_loopback_port"
    assert str(info.value).startswith(
        f"mqtt.plaintext_loopback_port {lay.plaintext_loopback_port} is already in use"
    )


def test_device_port_taken_on_loopback_blocks_the_wildcard_bind(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    with socket.socket() as other:
        other.bind(("127.0.0.1", lay.port))
        other.listen()
        with pytest.raises(PortInUseError, match=r"--mqtt-port or PLANTY_MQTT_PORT$"):
            check_ports_free(lay)


def test_bind_address_not_on_this_machine(tmp_path: Path) -> None:
    lay = layout(tmp_path, bind="192.0.2.123")  # TEST-NET-1, never local
    with pytest.raises(ListenerUnavailableError, match=r"mqtt\.port .* cannot be opened") as info:
        check_ports_free(lay)
    assert not isinstance(info.value, PortInUseError)


def test_describe_exit() -> None:
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with code 1"
    assert "adopted" in describe_exit(None)


def test_a_recycled_pid_in_the_pid_file_is_not_adopted(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    lay.directory.mkdir(parents=True)
    assert find_adoptable(lay) is None  # no pid file
    lay.pid_path.write_text(f"{os.getpid()}\n")  # a live process, but not our Mosquitto
    assert find_adoptable(lay) is None
    lay.pid_path.write_text("garbage")
    assert find_adoptable(lay) is None


def test_log_tail_prefers_start_up_errors_and_is_one_line(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    lay.directory.mkdir(parents=True)
    assert log_tail(lay) == "(Mosquitto wrote no log)"
    lay.log_path.write_text("".join(f"line {i}\n" for i in range(20)))
    assert log_tail(lay, 3) == "line 17 | line 18 | line 19"
    lay.stderr_path.write_text("Error: bad config\n")
    assert log_tail(lay) == "Error: bad config"
