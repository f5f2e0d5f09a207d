"""A flaky link: readings taken while the broker is unreachable arrive later, in order, once each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import machine
import network
import pytest

from tests.device.backend import MqttBackend
from tests.device.broker import DeviceEndpoint
from tests.device.conftest import DeviceThread
from tests.device.linkproxy import LinkProxy

pytestmark = pytest.mark.integration


def _counting(dev: Any) -> None:
    n = {"i": 0}

    @dev.sensor("light")
    def light() -> int:
        n["i"] += 1
        return 800 + n["i"]


async def test_ten_second_cut_loses_nothing_and_repeats_nothing(
    make_device: Callable[..., Any],
    device_endpoint: DeviceEndpoint,
    backend: MqttBackend,
    link: LinkProxy,
) -> None:
    dev = make_device(device_endpoint, interval_s=0.3, keepalive=5, ring_size=64)
    _counting(dev)
    did = device_endpoint.device_id
    with DeviceThread(dev):
        await backend.wait_for(lambda: len(backend.of(did, "telemetry")) >= 4, what="readings")
        await asyncio.sleep(0.1)  # between two readings, not in the middle of one
        link.cut()
        cut_at = len(backend.of(did, "telemetry"))
        # The cut lasts until a pile-up of readings waits on the device: ~10 s at 0.3 s a
        # reading; longer on a loaded machine, where the board's thread samples less often
        # (a fixed 10 s once gave 7 readings at load average 12).
        await backend.wait_for(lambda: dev.backlog() >= 25, timeout=120, what="a pile-up")
        during = len(backend.of(did, "telemetry")) - cut_at
        kept = dev.backlog()
        link.restore()
        await backend.wait_for(
            lambda: [s for s in backend.of(did, "status")[1:] if s.get("online")],
            timeout=15,
            what="online again",
        )
        await backend.wait_for(lambda: dev.backlog() == 0 and dev.connected(), what="backlog sent")
        await asyncio.sleep(0.6)
    tele = backend.of(did, "telemetry")
    seqs = [t["seq"] for t in tele]
    assert during == 0
    assert kept >= 25  # ~33 readings were taken while the link was down
    assert seqs == list(range(len(seqs)))  # all of them, in order, none twice
    ts = [t["ts"] for t in tele]
    assert ts == sorted(ts)
    lights = [t["readings"]["light"] for t in tele]
    assert lights == list(range(801, 801 + len(lights)))
    assert dev.dropped == 0
    assert any("link lost" in line for line in dev.logs)


async def test_wifi_down_keeps_readings_and_the_ring_drops_the_oldest_when_full(
    make_device: Callable[..., Any], device_endpoint: DeviceEndpoint, backend: MqttBackend
) -> None:
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    dev = make_device(device_endpoint, interval_s=0.05, ring_size=8, link_up=wlan.isconnected)
    _counting(dev)
    did = device_endpoint.device_id
    try:
        with DeviceThread(dev):
            await backend.wait_for(lambda: backend.of(did, "telemetry"), what="a reading")
            network.up = False
            await asyncio.sleep(1.0)  # ~20 readings into a ring of 8
            assert not dev.connected()
            network.up = True
            await backend.wait_for(
                lambda: dev.dropped > 0 and dev.backlog() == 0 and dev.connected(),
                what="backlog sent",
            )
            await asyncio.sleep(0.2)
    finally:
        network.up = True
    seqs = [t["seq"] for t in backend.of(did, "telemetry")]
    assert seqs == sorted(set(seqs))  # in order, none twice
    missing = set(range(seqs[-1] + 1)) - set(seqs)
    assert len(missing) == dev.dropped  # exactly the oldest readings the full ring let go
    assert any("wifi down" in line for line in dev.logs)


async def test_deep_sleep_cycle_sends_then_sleeps_and_keeps_unsent_readings(
    make_device: Callable[..., Any],
    device_endpoint: DeviceEndpoint,
    backend: MqttBackend,
    link: LinkProxy,
    tmp_path: Path,
) -> None:
    did = device_endpoint.device_id
    dev = make_device(device_endpoint, interval_s=600)
    _counting(dev)
    # connected, sent, PUBACK seen, disconnected (in a thread: the board blocks, the test must not)
    assert await asyncio.to_thread(dev.run_once, listen_ms=300) is True
    await backend.wait_for(lambda: backend.of(did, "telemetry"), what="the reading")
    assert [t["seq"] for t in backend.of(did, "telemetry")] == [0]
    status, _ = await backend.retained_status(did)
    assert status["online"] is True  # a clean DISCONNECT: no will while it sleeps
    dev.deep_sleep(600_000)
    assert machine.slept[-1] == 600_000

    link.cut()  # the next wake finds no broker
    wake = make_device(device_endpoint, interval_s=600, backoff_ms=(50, 100))
    _counting(wake)
    before = int(time.time() * 1000)
    assert await asyncio.to_thread(wake.run_once, listen_ms=100, tries=2) is False
    wake.deep_sleep(600_000)

    link.restore()
    third = make_device(device_endpoint, interval_s=600)
    _counting(third)
    assert third.boot == 3
    assert await asyncio.to_thread(third.run_once, listen_ms=300) is True
    await backend.wait_for(lambda: len(backend.of(did, "telemetry")) == 3, what="3 readings")
    tele = backend.of(did, "telemetry")
    # boot 3 sends boot 2's reading first, numbered anew for this boot, with its own time
    assert [t["seq"] for t in tele[1:]] == [0, 1]
    assert before <= tele[1]["ts"] < tele[2]["ts"]
