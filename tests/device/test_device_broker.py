"""The device module against a real Mosquitto over TLS: connect, status, will, telemetry, commands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.device.backend import MqttBackend
from tests.device.broker import DeviceEndpoint
from tests.device.conftest import DeviceThread

pytestmark = pytest.mark.integration


def _plant(dev: Any) -> dict[str, Any]:
    """A pump on a relay and three sensors, as main.py wires them; returns what the pump saw."""
    pump: dict[str, Any] = {"level": 0, "on_calls": 0, "off_calls": 0}

    @dev.sensor("temperature")
    def temperature() -> float:
        return 21.5

    @dev.sensor("soil_moisture")
    def soil() -> float:
        return 0.43

    @dev.action("pump.on")
    def pump_on(args: dict[str, Any]) -> None:
        pump["level"] = 1
        pump["on_calls"] += 1

    @dev.action("pump.off")
    def pump_off(args: dict[str, Any]) -> None:
        pump["level"] = 0
        pump["off_calls"] += 1

    return pump


async def test_online_status_is_retained_and_telemetry_counts_up(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, backend: MqttBackend
) -> None:
    dev = make_device(device_endpoint, interval_s=0.2, fw="9.9.9")
    _plant(dev)
    did = device_endpoint.device_id
    with DeviceThread(dev):
        tele = await backend.wait_for(
            lambda: (t := backend.of(did, "telemetry")) and len(t) >= 3 and t, what="3 readings"
        )
        status, retained = await backend.retained_status(did)
    assert retained
    assert status["online"] is True
    assert status["fw"] == "9.9.9"
    assert status["boot"] == 1
    assert status["sensors"] == ["temperature", "soil_moisture"]
    assert status["actuators"] == ["pump"]
    assert status["interval_s"] == 0.2
    assert [t["seq"] for t in tele[:3]] == [0, 1, 2]
    assert tele[0]["readings"] == {"temperature": 21.5, "soil_moisture": 0.43}
    now_ms = time.time() * 1000
    assert all(now_ms - 60_000 < t["ts"] <= now_ms for t in tele)


async def test_last_will_marks_the_device_offline_when_it_vanishes(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, backend: MqttBackend
) -> None:
    dev = make_device(device_endpoint, keepalive=2)
    did = device_endpoint.device_id
    with DeviceThread(dev):
        await backend.wait_for(lambda: backend.of(did, "status"), what="status")
        dev._c.sock.s._s.close()  # power cut: the socket dies without DISCONNECT
        dev.running = False
    # Mosquitto notices the dead session and publishes the retained will.
    await backend.wait_for(
        lambda: {"online": False} in backend.of(did, "status"), timeout=15, what="last will"
    )
    status, retained = await backend.retained_status(did)
    assert (status, retained) == ({"online": False}, True)


async def test_pump_on_with_seconds_runs_acks_and_switches_off_by_itself(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, backend: MqttBackend
) -> None:
    dev = make_device(device_endpoint)
    pump = _plant(dev)
    did = device_endpoint.device_id
    with DeviceThread(dev):
        await backend.wait_for(lambda: backend.of(did, "status"), what="status")
        ack = await backend.command(did, "pump.on", {"seconds": 1.5})
        assert ack["ok"] is True
        assert pump["level"] == 1
        read = await backend.command(did, "read")
        assert read["result"]["actuators"] == {"pump": 1}
        await backend.wait_for(lambda: pump["level"] == 0, timeout=10, what="pump off")
        read = await backend.command(did, "read")
    assert pump == {"level": 0, "on_calls": 1, "off_calls": 1}
    assert read["result"]["actuators"] == {"pump": 0}
    assert read["result"]["readings"] == {"temperature": 21.5, "soil_moisture": 0.43}
    assert len(backend.of(did, "ack")) == 3  # no command besides the three we sent


async def test_a_repeated_command_id_runs_once_and_gets_the_same_answer(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, backend: MqttBackend
) -> None:
    dev = make_device(device_endpoint)
    pump = _plant(dev)
    did = device_endpoint.device_id
    with DeviceThread(dev):
        await backend.wait_for(lambda: backend.of(did, "status"), what="status")
        first = await backend.command(did, "pump.on", cid="c-same")
        second = await backend.command(did, "pump.on", cid="c-same")
    assert first == second == {"id": "c-same", "ok": True}
    assert pump["on_calls"] == 1


async def test_dedup_survives_a_reboot(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, backend: MqttBackend
) -> None:
    did = device_endpoint.device_id
    dev = make_device(device_endpoint)
    pump = _plant(dev)
    with DeviceThread(dev):
        await backend.wait_for(lambda: backend.of(did, "status"), what="status")
        first = await backend.command(did, "pump.on", cid="c-before-reboot")
    dev.disconnect()
    rebooted = make_device(device_endpoint)  # same flash folder, new boot
    pump2 = _plant(rebooted)
    assert rebooted.boot == 2
    with DeviceThread(rebooted):
        await backend.wait_for(
            lambda: [s for s in backend.of(did, "status") if s.get("boot") == 2], what="boot 2"
        )
        again = await backend.command(did, "pump.on", cid="c-before-reboot")
    assert again == first
    assert pump["on_calls"] == 1
    assert pump2["on_calls"] == 0


async def test_an_expired_command_is_refused_and_not_run(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, backend: MqttBackend
) -> None:
    dev = make_device(device_endpoint)
    pump = _plant(dev)
    did = device_endpoint.device_id
    with DeviceThread(dev):
        await backend.wait_for(lambda: backend.of(did, "status"), what="status")
        past = int(time.time() * 1000) - 1000
        ack = await backend.command(did, "pump.on", {"seconds": 5}, exp=past)
        future = int(time.time() * 1000) + 60_000
        ok = await backend.command(did, "pump.off", exp=future)
    assert ack["ok"] is False
    assert ack["error"] == "expired"
    assert ok["ok"] is True
    assert pump["on_calls"] == 0


async def test_builtins_ping_read_config_and_unknown_actions(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, backend: MqttBackend
) -> None:
    dev = make_device(device_endpoint)
    _plant(dev)
    did = device_endpoint.device_id
    with DeviceThread(dev):
        await backend.wait_for(lambda: backend.of(did, "status"), what="status")
        ping = await backend.command(did, "ping", cid="c-ping")
        read = await backend.command(did, "read")
        config = await backend.command(did, "config", {"interval_s": 30})
        status = await backend.wait_for(
            lambda: [s for s in backend.of(did, "status") if s.get("interval_s") == 30],
            what="status with the new interval",
        )
        bad = await backend.command(did, "config", {"interval_s": "fast"})
        unknown = await backend.command(did, "lamp.on")
        no_off = await backend.command(did, "pump.on", {"seconds": -1})
    assert ping == {"id": "c-ping", "ok": True}
    assert read["result"]["readings"] == {"temperature": 21.5, "soil_moisture": 0.43}
    assert config["ok"] is True and config["result"] == {"interval_s": 30}
    assert status[-1]["online"] is True
    assert dev.interval_s == 30
    assert bad["ok"] is False and "interval_s" in bad["error"]
    assert unknown == {"id": unknown["id"], "ok": False, "error": "unknown action lamp.on"}
    assert no_off["ok"] is False and "seconds" in no_off["error"]


async def test_a_wrong_token_is_refused_with_a_clear_line(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, backend: MqttBackend
) -> None:
    wrong = DeviceEndpoint(
        device_endpoint.host,
        device_endpoint.port,
        device_endpoint.ca_pem,
        device_endpoint.device_id,
        "not-the-token",
    )
    dev = make_device(wrong)
    assert dev.connect() is False
    assert not dev.connected()
    assert any("refused" in line and "check device_id and token" in line for line in dev.logs)
    assert all("not-the-token" not in line for line in dev.logs)
    await asyncio.sleep(0.3)
    assert backend.of(wrong.device_id, "status") == []


async def test_a_broker_with_another_ca_is_not_trusted(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, tmp_path: Any
) -> None:
    from tests.device.pki import make_pki

    other = make_pki(tmp_path / "other", cn="Someone else")
    dev = make_device(
        DeviceEndpoint(
            device_endpoint.host,
            device_endpoint.port,
            other.ca_pem,
            device_endpoint.device_id,
            device_endpoint.token,
        )
    )
    assert dev.connect() is False
    assert any("cannot reach" in line and "CERTIFICATE_VERIFY_FAILED" in line for line in dev.logs)


def test_a_device_given_several_endpoints_moves_to_the_next_when_one_is_gone(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint
) -> None:
    """A cluster (docs/scale-out.md): the first node is gone, the device goes on to the next."""
    from tests.conftest import free_port

    dead = DeviceEndpoint(
        device_endpoint.host,
        free_port(),  # nothing listens there: a node that died
        device_endpoint.ca_pem,
        device_endpoint.device_id,
        device_endpoint.token,
    )
    dev = make_device(dead, endpoints=[(device_endpoint.host, device_endpoint.port)])
    assert dev.connect() is False  # the dead node
    assert any("cannot reach" in line for line in dev.logs)
    assert dev.connect() is True  # the next one
    assert dev.port == device_endpoint.port
    dev._drop()


def test_every_node_from_the_gateway_is_tried_once(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint
) -> None:
    """The gateway gives every node, host:port first (`mqtt.endpoints`): not tried twice."""
    e = device_endpoint
    nodes = [[e.host, e.port], [e.host, 1], [e.host, 2]]
    dev = make_device(e, endpoints=nodes)
    assert dev._eps == [(e.host, e.port), (e.host, 1), (e.host, 2)]


async def test_a_clean_stop_says_goodbye_retained_and_the_will_never_fires(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, backend: MqttBackend
) -> None:
    """docs/protocol.md: before a clean shutdown, `{"online": false, "reason": "shutdown"}`
    retained, then DISCONNECT; the broker records a clean offline, not the last will."""
    dev = make_device(device_endpoint, keepalive=2)
    did = device_endpoint.device_id
    with DeviceThread(dev):
        await backend.wait_for(lambda: backend.of(did, "status"), what="status")
    # DeviceThread.stop(): running = False, so run() ends with shutdown()
    goodbye = {"online": False, "reason": "shutdown"}
    await backend.wait_for(lambda: goodbye in backend.of(did, "status"), what="goodbye")
    assert not dev.connected()
    assert any("said goodbye" in line for line in dev.logs)
    status, retained = await backend.retained_status(did)
    assert (status, retained) == (goodbye, True)
    # Well past 1.5 keepalives: a will would have replaced the retained goodbye by now.
    await asyncio.sleep(4)
    assert {"online": False} not in backend.of(did, "status")
    assert (await backend.retained_status(did)) == (goodbye, True)
