"""The device module against the real gateway: supervised Mosquitto over TLS, HTTP API, outbox.

Everything is checked where a user would look: the gateway's HTTP API (devices,
commands, telemetry), plus what the pump relay saw on the board.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from planty_broker.protocol import Channel, Command, Topics, encode
from tests.device.broker import DeviceEndpoint
from tests.device.conftest import DeviceThread
from tests.device.linkproxy import LinkProxy
from tests.integration.core.conftest import ADMIN, eventually

pytestmark = pytest.mark.integration

PLANTY = str(Path(sys.executable).parent / "planty")


def _plant(dev: Any, on_first: Callable[[], None] | None = None) -> dict[str, Any]:
    """Two sensors and a pump relay; returns what the relay saw (`on_first` runs in the first on)."""
    pump: dict[str, Any] = {"level": 0, "on_calls": 0, "off_calls": 0, "on_at": [], "off_at": []}

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
        pump["on_at"].append(time.monotonic())
        if on_first is not None and pump["on_calls"] == 1:
            on_first()

    @dev.action("pump.off")
    def pump_off(args: dict[str, Any]) -> None:
        pump["level"] = 0
        pump["off_calls"] += 1
        pump["off_at"].append(time.monotonic())

    return pump


async def _device(api: httpx.AsyncClient, device_id: str) -> dict[str, Any]:
    r = await api.get(f"/devices/{device_id}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def _presence(api: httpx.AsyncClient, device_id: str, state: str) -> dict[str, Any]:
    """Wait until the API shows the device in `state` (online: with its status received)."""

    async def check() -> dict[str, Any] | None:
        d = await _device(api, device_id)
        if d["presence"]["state"] != state or (state == "online" and not d["sensors"]):
            return None
        return d

    return await eventually(check, timeout=15)  # type: ignore[no-any-return]


async def _command(api: httpx.AsyncClient, command_id: str) -> dict[str, Any]:
    r = await api.get(f"/commands/{command_id}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def _telemetry(api: httpx.AsyncClient, device_id: str) -> list[dict[str, Any]]:
    r = await api.get(f"/devices/{device_id}/telemetry", params={"limit": 10_000})
    assert r.status_code == 200, r.text
    return r.json()["readings"]  # type: ignore[no-any-return]


def _unix_ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def test_device_comes_online_and_its_status_and_telemetry_show_in_the_api(
    make_device: Callable[..., Any],
    gateway_endpoint: DeviceEndpoint,
    gateway_api: httpx.AsyncClient,
) -> None:
    did = gateway_endpoint.device_id
    dev = make_device(gateway_endpoint, interval_s=0.3, fw="9.9.9")
    _plant(dev)
    started = int(time.time() * 1000)
    with DeviceThread(dev):
        shown = await _presence(gateway_api, did, "online")
        await eventually(lambda: _at_least(gateway_api, did, 3), timeout=15)
    assert shown["online"] is True
    assert shown["presence"]["cause"] in ("status_online", "message")
    assert shown["fw"] == "9.9.9"
    assert shown["interval_s"] == 0.3
    assert shown["sensors"] == ["temperature", "soil_moisture"]
    assert shown["actuators"] == ["pump"]
    tele = await _telemetry(gateway_api, did)
    assert [t["seq"] for t in tele] == list(range(len(tele)))
    assert tele[0]["readings"] == {"temperature": 21.5, "soil_moisture": 0.43}
    ts = [_unix_ms(t["ts"]) for t in tele]
    assert started - 1000 <= ts[0] and ts == sorted(ts)  # the device's own clock, not arrival
    d = await _device(gateway_api, did)
    assert d["counts"]["errors"] == 0
    assert d["latest"]["seq"] == tele[-1]["seq"]


async def test_a_board_stopped_on_purpose_is_a_clean_offline_never_the_last_will(
    make_device: Callable[..., Any],
    gateway_endpoint: DeviceEndpoint,
    gateway_api: httpx.AsyncClient,
) -> None:
    did = gateway_endpoint.device_id
    dev = make_device(gateway_endpoint, interval_s=0.3)
    _plant(dev)
    with DeviceThread(dev):
        await _presence(gateway_api, did, "online")
    # run() ended with shutdown(): the retained goodbye, then DISCONNECT
    gone = await _presence(gateway_api, did, "offline")
    assert gone["presence"]["cause"] == "shutdown"
    assert not dev.connected()


async def _at_least(api: httpx.AsyncClient, device_id: str, n: int) -> bool:
    return len(await _telemetry(api, device_id)) >= n


async def test_pump_on_with_seconds_from_the_api_runs_is_acked_and_stops_by_itself(
    make_device: Callable[..., Any],
    gateway_endpoint: DeviceEndpoint,
    gateway_api: httpx.AsyncClient,
) -> None:
    did = gateway_endpoint.device_id
    dev = make_device(gateway_endpoint, interval_s=0.5)
    pump = _plant(dev)
    with DeviceThread(dev):
        await _presence(gateway_api, did, "online")
        r = await gateway_api.post(
            f"/devices/{did}/commands",
            json={"action": "pump.on", "args": {"seconds": 2}, "wait_s": 10},
        )
        assert r.status_code == 200, r.text  # final within wait_s
        sent = r.json()
        assert pump["level"] == 1  # running while the API says acked
        await eventually(lambda: pump["level"] == 0, timeout=10)
        read = await gateway_api.post(f"/devices/{did}/read", json={"wait_s": 10})
        assert read.status_code == 200, read.text
    assert sent["state"] == "acked" and sent["final"] is True
    assert sent["args"] == {"seconds": 2}
    shown = await _command(gateway_api, sent["id"])
    assert [h["state"] for h in shown["history"]] == ["queued", "sent", "acked"]
    assert pump["on_calls"] == 1 and pump["off_calls"] == 1
    # not before its seconds ran out (ticks_ms counts whole milliseconds)
    assert pump["off_at"][0] - pump["on_at"][0] >= 2.0 - 0.002
    assert any("pump off, its seconds ran out" in line for line in dev.logs)
    # Nobody sent an off: the gateway knows of the pump.on and our read, nothing else.
    listed = (await gateway_api.get(f"/devices/{did}/commands")).json()["commands"]
    assert sorted(c["action"] for c in listed) == ["pump.on", "read"]
    assert read.json()["command"]["result"]["actuators"] == {"pump": 0}
    assert read.json()["readings"] == {"temperature": 21.5, "soil_moisture": 0.43}


async def test_a_lost_ack_is_re_sent_with_the_same_id_and_the_pump_runs_once(
    make_device: Callable[..., Any],
    gateway_endpoint: DeviceEndpoint,
    gateway_api: httpx.AsyncClient,
    gateway_link: LinkProxy,
    planty_gateway: Any,
) -> None:
    did = gateway_endpoint.device_id

    def wifi_blip() -> None:  # the link drops while the pump starts: its ack never leaves
        gateway_link.cut()
        gateway_link.restore()

    dev = make_device(gateway_endpoint, interval_s=0.5)
    pump = _plant(dev, on_first=wifi_blip)
    with DeviceThread(dev):
        await _presence(gateway_api, did, "online")
        r = await gateway_api.post(
            f"/devices/{did}/commands",
            json={"action": "pump.on", "args": {"seconds": 60}, "wait_s": 20},
        )
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["state"] == "acked"
        assert done["attempts"] >= 2  # the outbox sent it again, with the same id
        again = sum("answered as before" in line for line in dev.logs)
        assert again >= 1  # the re-send reached the device, which answered from memory

        # The same cmd delivered once more over the wire (a broker re-delivery): runs nothing.
        topic = Topics(planty_gateway.settings.mqtt.topic_prefix).device(did, Channel.CMD)
        wire = encode(Command(done["id"], "pump.on", done["args"], _unix_ms(done["expires_at"])))
        await planty_gateway.link.publish(topic, wire)
        await eventually(
            lambda: sum("answered as before" in line for line in dev.logs) > again, timeout=10
        )
        await asyncio.sleep(0.3)  # its ack reaches the gateway too
    assert pump["on_calls"] == 1
    assert any("link lost" in line for line in dev.logs)
    shown = await _command(gateway_api, done["id"])
    assert shown["state"] == "acked" and shown["error"] is None
    assert [h["state"] for h in shown["history"]].count("sent") == done["attempts"]
    assert "late_ack" not in shown
    listed = (await gateway_api.get(f"/devices/{did}/commands")).json()["commands"]
    assert [c["id"] for c in listed] == [done["id"]]


async def test_an_expired_command_is_refused_by_the_device_and_the_gateway_records_why(
    make_device: Callable[..., Any],
    gateway_endpoint: DeviceEndpoint,
    gateway_api: httpx.AsyncClient,
    gateway_link: LinkProxy,
    planty_gateway: Any,
) -> None:
    """The outbox never sends late; a late copy on the wire (crafted here) must still not run."""
    did = gateway_endpoint.device_id
    dev = make_device(gateway_endpoint, interval_s=0.5)
    pump = _plant(dev)
    with DeviceThread(dev):
        await _presence(gateway_api, did, "online")
        gateway_link.cut()  # away: the command waits in the outbox until its deadline passes
        await _presence(gateway_api, did, "offline")
        r = await gateway_api.post(
            f"/devices/{did}/commands",
            json={"action": "pump.on", "args": {"seconds": 5}, "ttl_s": 1},
        )
        assert r.status_code == 202, r.text
        cid = r.json()["id"]

        async def expired() -> dict[str, Any] | None:
            c = await _command(gateway_api, cid)
            return c if c["state"] == "expired" else None

        gone = await eventually(expired, timeout=10)
        assert gone["attempts"] == 0
        gateway_link.restore()
        await _presence(gateway_api, did, "online")

        exp = _unix_ms(gone["expires_at"])
        assert exp < time.time() * 1000
        topic = Topics(planty_gateway.settings.mqtt.topic_prefix).device(did, Channel.CMD)
        await planty_gateway.link.publish(topic, encode(Command(cid, "pump.on", gone["args"], exp)))

        async def answered() -> dict[str, Any] | None:
            c = await _command(gateway_api, cid)
            return c if c.get("late_ack") else None

        late = await eventually(answered, timeout=10)
    assert late["late_ack"]["ok"] is False
    assert late["late_ack"]["error"] == "expired"  # the device's own answer, seen by the gateway
    assert late["state"] == "expired"
    assert pump["on_calls"] == 0 and pump["level"] == 0
    assert any(cid in line and "expired, not run" in line for line in dev.logs)


async def test_ten_second_cut_every_reading_reaches_the_api_in_order_once(
    make_device: Callable[..., Any],
    gateway_endpoint: DeviceEndpoint,
    gateway_api: httpx.AsyncClient,
    gateway_link: LinkProxy,
) -> None:
    did = gateway_endpoint.device_id
    dev = make_device(gateway_endpoint, interval_s=0.3, keepalive=5, ring_size=64)
    n = {"i": 0}

    @dev.sensor("light")
    def light() -> int:
        n["i"] += 1
        return 800 + n["i"]

    with DeviceThread(dev):
        await _presence(gateway_api, did, "online")
        await eventually(lambda: _at_least(gateway_api, did, 4), timeout=15)
        # cut just after a reading went out, not while one is on the wire
        seq = dev.seq
        await eventually(lambda: dev.seq > seq and dev.backlog() == 0, every=0.01)
        gateway_link.cut()
        sent_before = dev.seq
        gone = await _presence(gateway_api, did, "offline")
        # The cut lasts 10 s and until a pile-up waits on the board: on a loaded machine the
        # board's thread gets fewer turns (11 readings in a fixed 10 s at load average 12
        # failed a landing), so the pile-up is a condition to wait for, not a rate.
        await asyncio.sleep(10)
        await eventually(lambda: dev.backlog() >= 15, timeout=120, every=0.05)
        kept = dev.backlog()
        stored_during = len(await _telemetry(gateway_api, did))
        gateway_link.restore()
        back = await _presence(gateway_api, did, "online")
        await eventually(lambda: dev.connected() and dev.backlog() == 0, timeout=15)
    published = dev.seq - dev.backlog()
    tele = await eventually(lambda: _exactly(gateway_api, did, published), timeout=10)
    assert gone["presence"]["cause"] == "last_will"
    assert back["presence"]["cause"] in ("status_online", "message")
    assert stored_during == sent_before  # nothing got through while the link was down
    # a real pile-up (waited for above): that nothing of it is lost is what the checks below
    # prove (dropped 0, every seq once, in order)
    assert kept >= 15
    assert dev.dropped == 0
    seqs = [t["seq"] for t in tele]
    assert seqs == list(range(published))  # all of them, in order, none twice
    assert [t["readings"]["light"] for t in tele] == list(range(801, 801 + published))
    arrived = [t["received_at"] for t in tele]
    assert arrived == sorted(arrived)  # stored in the order they were sent
    ts = [_unix_ms(t["ts"]) for t in tele]
    assert ts == sorted(ts)
    first_kept = tele[sent_before]  # taken just after the cut, stored after it: ts is kept
    assert _unix_ms(first_kept["received_at"]) - _unix_ms(first_kept["ts"]) >= 9000


async def _exactly(api: httpx.AsyncClient, device_id: str, n: int) -> list[dict[str, Any]] | None:
    tele = await _telemetry(api, device_id)
    return tele if len(tele) >= n else None


async def _planty(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PLANTY_ADMIN_TOKEN": ADMIN, "COLUMNS": "200"}
    return await asyncio.to_thread(
        subprocess.run, [PLANTY, *args], capture_output=True, text=True, env=env, timeout=60
    )


async def test_the_secrets_file_the_cli_writes_gets_the_example_board_online(
    planty_gateway: Any,
    gateway_api: httpx.AsyncClient,
    device_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import main
    import planty_device

    path = tmp_path / "secrets.json"
    r = await _planty(
        "devices",
        "add",
        device_id,
        "--url",
        planty_gateway.api_url,
        "--export-device-config",
        str(path),
        "--wifi-ssid",
        "greenhouse",
        "--wifi-password",
        "wifi-pass",
    )
    assert r.returncode == 0, r.stderr
    secrets = planty_device.load_secrets(str(path))
    assert secrets["device_id"] == device_id
    assert secrets["wifi"] == {"ssid": "greenhouse", "password": "wifi-pass"}

    monkeypatch.chdir(tmp_path)  # the board's flash: state files land here
    cfg = dict(main.CONFIG)
    dev = main.build(secrets, cfg)  # what main.py does on the board, minus Wi-Fi
    assert await asyncio.to_thread(dev.run_once, listen_ms=300) is True
    shown = await _device(gateway_api, device_id)
    assert shown["fw"] == cfg["fw"]
    assert shown["actuators"] == ["pump"]
    assert "soil_moisture" in shown["sensors"] and "light" in shown["sensors"]
    tele = await eventually(lambda: _exactly(gateway_api, device_id, 1), timeout=10)
    assert [t["seq"] for t in tele] == [0]
    assert set(tele[0]["readings"]) == set(shown["sensors"])

    # Without --wifi-ssid the board says what is missing instead of failing later.
    bare = tmp_path / "bare.json"
    r = await _planty(
        "devices",
        "add",
        device_id + "-b",
        "--url",
        planty_gateway.api_url,
        "--export-device-config",
        str(bare),
    )
    assert r.returncode == 0, r.stderr
    with pytest.raises(ValueError, match=r"lacks wifi\.ssid: fill in your network name"):
        planty_device.load_secrets(str(bare))
