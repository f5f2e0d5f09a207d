"""The device's connection: TLS with the gateway's CA, PUBACK accounting, reconnecting."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from planty_broker.protocol import Channel, Topics, decode_status
from planty_broker.simulator.device import DeviceOfflineError, DeviceState, SimDevice
from planty_broker.simulator.profile import DeviceCredentials, DeviceProfile
from tests.integration.simulator.conftest import Broker, MosquittoProcess, Observer, make_ca, pem

pytestmark = pytest.mark.integration

QUICK = DeviceProfile(
    interval_s=0.05, keepalive_s=5, reconnect_min_s=0.05, reconnect_max_s=0.3, connect_timeout_s=2
)


async def first_tick(dev: SimDevice) -> None:
    """Wait for the first periodic telemetry (within 1 s of connecting) and its PUBACK."""
    await dev.wait_online()
    async with asyncio.timeout(3):
        while dev.stats.telemetry_acked < 1:
            await asyncio.sleep(0.01)


def creds(broker: Broker, **changes: object) -> DeviceCredentials:
    return replace(broker.credentials(f"tls-{uuid.uuid4().hex[:6]}"), **changes)  # type: ignore[arg-type]


async def test_tls_with_the_gateway_ca_connects_and_checks_the_host_name(
    tls_broker: Broker, topics: Topics
) -> None:
    for host in ("127.0.0.1", "localhost"):  # both are in the server certificate
        async with SimDevice(creds(tls_broker, host=host), QUICK, topics=topics) as dev:
            await dev.wait_online(5)
            await asyncio.sleep(0.2)
        assert dev.stats.telemetry_acked >= 1


async def test_tls_with_another_ca_is_refused_with_a_clear_reason(
    tls_broker: Broker, topics: Topics
) -> None:
    _key, other = make_ca("Some other CA")
    dev = SimDevice(creds(tls_broker, ca_pem=pem(other)), QUICK, topics=topics)
    await dev.start()
    with pytest.raises(
        DeviceOfflineError, match=r"TLS to 127\.0\.0\.1:\d+ failed: certificate verify failed"
    ):
        await dev.wait_online(1.0)
    await dev.stop()
    assert dev.stats.connects == 0
    assert dev.stats.connect_failures >= 1


async def test_plain_tcp_to_a_tls_listener_fails_and_keeps_retrying(
    tls_broker: Broker, topics: Topics
) -> None:
    dev = SimDevice(creds(tls_broker, tls=False), QUICK, topics=topics)
    await dev.start()
    with pytest.raises(DeviceOfflineError):
        await dev.wait_online(1.0)
    assert dev.state in (DeviceState.WAITING, DeviceState.CONNECTING)
    await dev.stop()


async def test_acked_counts_only_what_the_server_pubacked(own_mosquitto: MosquittoProcess) -> None:
    broker = Broker("127.0.0.1", own_mosquitto.port)
    profile = replace(QUICK, interval_s=60, keepalive_s=30)
    dev = SimDevice(broker.credentials("acct-1"), profile, topics=Topics("acct/v1"))
    await dev.start()
    await first_tick(dev)
    base = dev.stats
    own_mosquitto.freeze()  # the server still holds the socket but answers nothing
    try:
        sent = [dev.publish_telemetry() for _ in range(5)]
        await asyncio.sleep(0.3)
        frozen = dev.stats
    finally:
        own_mosquitto.thaw()
    assert sent == [1, 2, 3, 4, 5]
    assert frozen.telemetry_published == base.telemetry_published + 5
    assert frozen.telemetry_acked == base.telemetry_acked
    assert dev.inflight == 5
    assert await dev.wait_acked(5)
    assert dev.stats.telemetry_acked == base.telemetry_acked + 5
    await dev.stop()


async def test_in_flight_window_caps_unacked_publishes(own_mosquitto: MosquittoProcess) -> None:
    broker = Broker("127.0.0.1", own_mosquitto.port)
    profile = replace(QUICK, interval_s=60, keepalive_s=30, max_inflight=3)
    async with SimDevice(broker.credentials("window-1"), profile, topics=Topics("win/v1")) as dev:
        await first_tick(dev)
        own_mosquitto.freeze()
        try:
            results = [dev.publish_telemetry() for _ in range(5)]
        finally:
            own_mosquitto.thaw()
        assert results == [1, 2, 3, None, None]
        assert dev.stats.telemetry_skipped == 2
        assert await dev.burst(50) == 50  # waits for window room instead of skipping
        assert await dev.wait_acked(5)
    assert dev.stats.telemetry_acked == dev.stats.telemetry_published == 54  # 1 + 3 + 50


async def test_device_reconnects_after_the_server_restarts(own_mosquitto: MosquittoProcess) -> None:
    broker = Broker("127.0.0.1", own_mosquitto.port)
    topics = Topics("restart/v1")
    async with SimDevice(broker.credentials("phoenix-1"), QUICK, topics=topics) as dev:
        await dev.wait_online()
        seq_before = dev.next_seq
        own_mosquitto.stop()
        await asyncio.sleep(0.3)
        assert dev.state != DeviceState.ONLINE
        own_mosquitto.start()
        await dev.wait_online(5)
        # The fresh server has no retained status: the device announced itself again.
        obs = Observer(broker, topics)
        await obs.start()
        try:
            status = await obs.wait_for(lambda m: m.channel == Channel.STATUS)
            await obs.wait_count("phoenix-1", Channel.TELEMETRY, 2)
        finally:
            await obs.stop()
        assert decode_status(status.payload).online
        assert decode_status(status.payload).boot == 1  # same boot: only the network went away
        assert dev.next_seq > seq_before
    assert dev.stats.connects == 2
    assert dev.stats.disconnects == 1


async def test_wrong_token_is_refused_and_reported(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "auth-1", "right-token"], check=True)
    passwords.chmod(0o600)
    mosquitto = MosquittoProcess(tmp_path, f"allow_anonymous false\npassword_file {passwords}\n")
    mosquitto.start()
    try:
        broker = Broker("127.0.0.1", mosquitto.port)
        good = replace(broker.credentials("auth-1"), token="right-token")
        async with SimDevice(good, QUICK, topics=Topics("auth/v1")) as dev:
            await dev.wait_online()
        bad = replace(good, token="wrong-token")
        dev = SimDevice(bad, QUICK, topics=Topics("auth/v1"))
        await dev.start()
        with pytest.raises(DeviceOfflineError, match="refused the login") as info:
            await dev.wait_online(1.0)
        await dev.stop()
    finally:
        mosquitto.stop()
    assert "wrong-token" not in str(info.value)
    assert dev.stats.connect_failures >= 1
    assert dev.stats.connects == 0
