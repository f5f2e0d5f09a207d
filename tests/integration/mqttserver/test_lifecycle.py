"""Lifecycle of the supervised Mosquitto: restart, credential reload, adoption, start errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gmqtt.mqtt.handler import MQTTConnectError

from planty_broker.mqttserver.errors import MosquittoStartError, PortInUseError
from planty_broker.mqttserver.layout import MosquittoLayout, MqttAccount
from planty_broker.mqttserver.passwords import hash_token, new_token
from planty_broker.mqttserver.probe import mqtt_connect
from planty_broker.mqttserver.process import pid_alive
from planty_broker.mqttserver.supervisor import MosquittoSupervisor
from planty_broker.protocol import Channel, Topics
from tests.integration.mqttserver.clients import TestClient, device_tls
from tests.integration.mqttserver.conftest import (
    OBSERVER,
    Server,
    make_layout,
    provider,
    searchable_tmpdir,
)

pytestmark = pytest.mark.integration

T = Topics("planty/v1")
TELEMETRY = T.device("dev-a", Channel.TELEMETRY)


async def connect_device(server: Server, device_id: str, token: str | None = None) -> TestClient:
    c = TestClient(device_id, device_id, token or server.tokens[device_id])
    await c.connect("localhost", server.layout.port, device_tls(server.supervisor.ca_pem))
    return c


async def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------- credentials reload


async def test_removing_a_device_kicks_its_live_session_and_refuses_it_after(
    server: Server,
) -> None:
    c = await connect_device(server, "dev-b")
    remaining = {k: v for k, v in server.hashes.items() if k != "dev-b"}
    try:
        await server.supervisor.update_users(remaining)
        await asyncio.wait_for(c.disconnected.wait(), 5)
        await c.close()
        again = TestClient("dev-b", "dev-b", server.tokens["dev-b"])
        with pytest.raises(MQTTConnectError, match="code 5"):
            await again.connect(
                "localhost", server.layout.port, device_tls(server.supervisor.ca_pem)
            )
        await again.close()
    finally:
        await server.supervisor.update_users(server.hashes)
    # Back in the file: it can log in again.
    c = await connect_device(server, "dev-b")
    await c.close()


async def test_a_changed_token_kicks_the_old_session_and_only_the_new_token_works(
    server: Server,
) -> None:
    c = await connect_device(server, "dev-c")
    new = new_token()
    try:
        await server.supervisor.update_users({**server.hashes, "dev-c": hash_token(new)})
        await asyncio.wait_for(c.disconnected.wait(), 5)
        await c.close()
        fresh = await connect_device(server, "dev-c", new)
        await fresh.close()
    finally:
        await server.supervisor.update_users(server.hashes)


async def test_update_users_refuses_bad_entries_and_keeps_the_old_files(server: Server) -> None:
    before = server.layout.password_path.read_text()
    for bad in ({"planty-gateway": hash_token("x")}, {"a:b": hash_token("x")}, {"dev-x": "plain"}):
        with pytest.raises(ValueError, match=r"reserved|not allowed|no valid"):
            await server.supervisor.update_users(bad)
    assert server.layout.password_path.read_text() == before
    c = await connect_device(server, "dev-a")
    await c.close()


async def test_concurrent_updates_end_with_the_newest_mapping(server: Server) -> None:
    host, port = server.supervisor.internal_url
    mappings = [{**server.hashes, f"dev-n{i}": hash_token(f"t{i}")} for i in range(20)]
    try:
        await asyncio.gather(*(server.supervisor.update_users(m) for m in mappings))
        text = server.layout.password_path.read_text()
        assert "dev-n19:" in text
        assert "dev-n18:" not in text
        assert await mqtt_connect(host, port, "dev-n19", "t19") == 0
        assert await mqtt_connect(host, port, "dev-n0", "t0") == 5
    finally:
        await server.supervisor.update_users(server.hashes)


# ---------------------------------------------------------------- restart


async def test_a_killed_mosquitto_is_restarted(server: Server) -> None:
    old = server.supervisor.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await wait_until(lambda: server.supervisor.restarts == 1)
    assert server.supervisor.pid not in (None, old)
    c = await connect_device(server, "dev-a")  # devices are served again
    await c.close()


# ---------------------------------------------------------------- adoption


@pytest.fixture
async def data_dir() -> AsyncIterator[Path]:
    path = searchable_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _queue_for_observer(layout: MosquittoLayout, ca_pem: str, token: str, n: int) -> None:
    """dev-a publishes n QoS 1 readings while the observer's persistent session is offline."""
    dev = TestClient("dev-a", "dev-a", token)
    await dev.connect("localhost", layout.port, device_tls(ca_pem))
    await dev.subscribe(TELEMETRY)
    for i in range(n):
        dev.publish(TELEMETRY, f"r{i}".encode())
    await dev.receive_until(TELEMETRY, f"r{n - 1}".encode())  # all routed by Mosquitto
    await dev.close()


async def _observer(layout: MosquittoLayout, password: str) -> TestClient:
    c = TestClient(OBSERVER, OBSERVER, password, clean=False)
    await c.connect(layout.internal_host, layout.internal_port)
    return c


async def test_mosquitto_left_by_a_killed_gateway_is_adopted_with_its_queue(
    data_dir: Path,
) -> None:
    token, observer_pw = new_token(), new_token()
    users = {"dev-a": hash_token(token)}
    accounts = {OBSERVER: hash_token(observer_pw)}
    layout = make_layout(data_dir)
    cfg = {
        "data_dir": str(data_dir),
        "port": layout.port,
        "internal_port": layout.internal_port,
        "users": users,
        "accounts": accounts,
    }
    gateway = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("gateway_stand_in.py")),
        json.dumps(cfg),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(gateway.stdout.readline(), 30)  # type: ignore[union-attr]
        assert line.startswith(b"READY "), line
        mosquitto_pid = int(line.split()[1])
        # The gateway's persistent session subscribes, then the gateway dies hard.
        obs = await _observer(layout, observer_pw)
        await obs.subscribe(T.subscription(Channel.TELEMETRY))
        await obs.close()
        gateway.kill()
        await gateway.wait()
        assert pid_alive(mosquitto_pid)
        ca_pem = (data_dir / "pki" / "ca.pem").read_text()
        await _queue_for_observer(layout, ca_pem, token, 5)

        sup = MosquittoSupervisor(
            layout,
            provider(users),
            extra_accounts=[MqttAccount(OBSERVER, hash_token(observer_pw))],
        )
        async with sup:
            assert sup.adopted
            assert sup.pid == mosquitto_pid
            obs = await _observer(layout, observer_pw)
            got = [await obs.next_message() for _ in range(5)]
            assert got == [(TELEMETRY, f"r{i}".encode()) for i in range(5)]
            await obs.close()
            # Adopted, then supervised: a crash is still noticed and repaired.
            os.kill(mosquitto_pid, signal.SIGKILL)
            await wait_until(lambda: sup.restarts == 1)
        assert not pid_alive(mosquitto_pid)
        assert sup.pid is None
    finally:
        if gateway.returncode is None:
            gateway.kill()
            await gateway.wait()


async def test_a_left_over_mosquitto_with_another_config_is_restarted_without_loss(
    data_dir: Path,
) -> None:
    token, observer_pw = new_token(), new_token()
    users = {"dev-a": hash_token(token)}
    extra = [MqttAccount(OBSERVER, hash_token(observer_pw))]
    layout = make_layout(data_dir)
    first = MosquittoSupervisor(layout, provider(users), extra_accounts=extra)
    await first.__aenter__()
    try:
        old_pid = first.pid
        assert old_pid is not None
        obs = await _observer(layout, observer_pw)
        await obs.subscribe(T.subscription(Channel.TELEMETRY))
        await obs.close()
        # The gateway "crashes": its supervisor vanishes without stopping Mosquitto.
        first._watch_task.cancel()  # type: ignore[union-attr]
        await _queue_for_observer(layout, first.ca_pem, token, 3)

        changed = dataclasses.replace(layout, max_queued_messages=50_000)
        async with MosquittoSupervisor(changed, provider(users), extra_accounts=extra) as sup:
            assert not sup.adopted
            assert sup.pid != old_pid
            assert not pid_alive(old_pid)
            assert "max_queued_messages 50000" in layout.conf_path.read_text()
            obs = await _observer(layout, observer_pw)  # the queue survived the restart
            got = [await obs.next_message() for _ in range(3)]
            assert got == [(TELEMETRY, f"r{i}".encode()) for i in range(3)]
            await obs.close()
    finally:
        first._running = None  # already stopped by the second supervisor
        await first.__aexit__(None, None, None)


# ---------------------------------------------------------------- start errors


@pytest.mark.parametrize(
    ("setting", "field"),
    [("mqtt.port", "port"), ("mqtt.internal_port", "internal_port")],
)
async def test_a_taken_port_is_one_clear_line(tmp_path: Path, setting: str, field: str) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        layout = dataclasses.replace(make_layout(tmp_path), **{field: taken})
        with pytest.raises(PortInUseError) as info:
            async with MosquittoSupervisor(layout, provider({})):
                pass
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{setting} {taken} is already in use by another program; pick")
    assert not layout.pid_path.exists()


async def test_mosquitto_that_exits_at_start_reports_its_last_words(tmp_path: Path) -> None:
    fake = tmp_path / "mosquitto"
    fake.write_text("#!/bin/sh\necho 'Error: the fake broker refuses to start' >&2\nexit 3\n")
    fake.chmod(0o755)
    layout = dataclasses.replace(make_layout(tmp_path / "data"), mosquitto_bin=str(fake))
    with pytest.raises(MosquittoStartError) as info:
        async with MosquittoSupervisor(layout, provider({})):
            pass
    message = str(info.value)
    assert "\n" not in message
    assert "exited with code 3 during start-up" in message
    assert "the fake broker refuses to start" in message


async def test_mosquitto_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    fake = tmp_path / "mosquitto"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    layout = dataclasses.replace(make_layout(tmp_path / "data"), mosquitto_bin=str(fake))
    sup = MosquittoSupervisor(layout, provider({}), start_timeout_s=0.5)
    with pytest.raises(
        MosquittoStartError, match=r"did not accept our login on .* within 0.5 s of start-up"
    ):
        await sup.__aenter__()
    assert sup.pid is None


async def test_port_free_after_stop(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    async with MosquittoSupervisor(layout, provider({})) as sup:
        pid = sup.pid
        assert pid is not None
    assert not pid_alive(pid)
    with socket.socket() as s:  # the device port is released at once
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", layout.port))
