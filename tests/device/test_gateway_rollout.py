"""Staged rollouts through the real gateway: supervised Mosquitto over TLS, the API, SQLite.

The devices are the device library itself: 20 boards in the real MicroPython VM (one
process, real sockets), or boards under CPython (tests/device/board.py), whose reboot runs
what their flash holds. Everything is checked where an admin would look: the API and the
event log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.device.board import Board, app_source
from tests.device.broker import DeviceEndpoint
from tests.device.conftest import GATEWAY_COMMANDS
from tests.device.linkproxy import LinkProxy
from tests.device.vmfleet import VmFleet, node
from tests.integration.core.conftest import ADMIN, eventually, gateway_settings, running_gateway

pytestmark = pytest.mark.integration

PLANTY = str(Path(sys.executable).parent / "planty")
DEVICE_DIR = Path(__file__).parent.parent.parent / "device"

FIRMWARE = {"ack_timeout_s": 1.5, "max_boots": 2, "trial_s": 20, "threshold": 0.2}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fw_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    settings = gateway_settings(
        tmp_path_factory.mktemp("fwgw"), commands=GATEWAY_COMMANDS, firmware=FIRMWARE
    )
    async with running_gateway(settings) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="session")
async def api(fw_gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=fw_gateway.api_url + "/api/v1",
        timeout=30,
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as client:
        yield client


async def _register(api: httpx.AsyncClient, n: int, prefix: str) -> list[dict[str, Any]]:
    out = []
    tag = uuid.uuid4().hex[:4]
    for i in range(n):
        r = await api.post("/devices", json={"id": f"{prefix}-{tag}-{i:02d}"})
        assert r.status_code == 201, r.text
        out.append(r.json())
    return out


async def _add_release(api: httpx.AsyncClient, base: str, body: str = "", kb: int = 8) -> str:
    """A new release (a unique version: a rerun must not meet the first run's)."""
    version = f"{base}-{uuid.uuid4().hex[:6]}"
    blob = hashlib.sha256(version.encode()).hexdigest().encode() * (kb * 16)
    files = {"plant_app.py": app_source(version, body), "calibration.bin": blob[: kb * 1024]}
    r = await api.post(
        "/firmware",
        json={
            "version": version,
            "files": [
                {"name": n, "content_b64": base64.b64encode(b).decode()} for n, b in files.items()
            ],
        },
    )
    assert r.status_code == 201, r.text
    assert {f["name"] for f in r.json()["files"]} == set(files)
    return version


async def _all_take_updates(api: httpx.AsyncClient, ids: list[str]) -> None:
    async def check() -> bool:
        for d in ids:
            r = await api.get(f"/devices/{d}/firmware")
            if r.json()["supports_updates"] is not True:
                return False
        return True

    await eventually(check, timeout=60)


async def _rollout_until(
    api: httpx.AsyncClient, rid: int, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await api.get(f"/rollouts/{rid}")
        body: dict[str, Any] = r.json()
        return body if done(body) else None

    return await eventually(check, timeout=timeout)  # type: ignore[no-any-return]


async def _firmware_events(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await api.get("/events", params={"types": "firmware", "limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["events"]  # type: ignore[no-any-return]


async def test_a_full_rollout_to_20_boards_in_the_micropython_vm(
    api: httpx.AsyncClient, fw_gateway: Any, tmp_path: Path
) -> None:
    if node() is None:
        pytest.skip("node is not installed: the MicroPython VM runs on Node")
    devices = await _register(api, 20, "vm")
    ids = [d["id"] for d in devices]
    m = devices[0]["mqtt"]
    async with VmFleet(
        tmp_path, m["host"], m["port"], m["ca_pem"], [(d["id"], d["token"]) for d in devices]
    ) as vm:
        await _all_take_updates(api, ids)
        version = await _add_release(api, "1.1.0")
        r = await api.post(f"/firmware/{version}/rollouts", json={"devices": ids, "first_wave": 2})
        assert r.status_code == 201, r.text
        started = r.json()
        assert started["wave_sizes"] == [2, 4, 8, 6]
        assert started["counts"] == {"pending": 20}
        done = await _rollout_until(api, started["id"], lambda b: b["state"] == "done", 240)
        assert vm.alive()
    assert done["counts"] == {"applied": 20}
    assert all(t["state"] == "applied" and t["reason"] is None for t in done["targets"])
    boards = vm.result["boards"]
    assert all(b["fw"] == version and b["boots"] == 2 and not b["crashes"] for b in boards)
    events = await _firmware_events(api)
    mine = [e for e in events if e["data"].get("rollout") == started["id"]]
    actions = [e["data"]["action"] for e in mine if "action" in e["data"]]
    assert actions == [
        "rollout_started",
        "wave_started",
        "wave_started",
        "wave_started",
        "rollout_done",
    ]
    applied = [e["device_id"] for e in mine if e["data"].get("state") == "applied"]
    assert sorted(applied) == sorted(ids)
    # waves in order: no device of a later wave was applied before the earlier wave was
    wave_of = {t["device_id"]: t["wave"] for t in done["targets"]}
    assert [wave_of[d] for d in applied] == sorted(wave_of[d] for d in applied)


async def test_a_wave_whose_devices_roll_back_halts_the_rollout(
    api: httpx.AsyncClient, make_device: Callable[..., Any], tmp_path: Path
) -> None:
    """Boards under CPython: the release crashes at boot, each board rolls back by itself."""
    devices = await _register(api, 5, "halt")
    ids = [d["id"] for d in devices]
    boards = [
        Board(
            DeviceEndpoint(
                d["mqtt"]["host"], d["mqtt"]["port"], d["mqtt"]["ca_pem"], d["id"], d["token"]
            ),
            tmp_path / d["id"],
            make_device,
            poll_ms=20,
        )
        for d in devices
    ]
    version = await _add_release(
        api, "2.0.0-bad", body="raise RuntimeError('no soil sensor driver')", kb=2
    )
    for b in boards:
        b.__enter__()
    try:
        await _all_take_updates(api, ids)
        r = await api.post(f"/firmware/{version}/rollouts", json={"devices": ids, "first_wave": 2})
        rid = r.json()["id"]
        halted = await _rollout_until(api, rid, lambda b: b["state"] == "halted", 90)
        # at the first roll-back already (1 of 2 is more than 20 %; the other one goes on),
        # or at both when their statuses arrive together
        assert re.fullmatch(
            r"wave 1: [12] of 2 failed or rolled back \(more than 20%\)", halted["reason"]
        )
        halted = await _rollout_until(
            api, rid, lambda b: b["counts"] == {"rolled_back": 2, "pending": 3}, 90
        )
        first = [t for t in halted["targets"] if t["wave"] == 1]
        assert all(t["reason"] == "not online after 2 boots" for t in first)
        await asyncio.sleep(2)  # halted means halted: nobody else starts
        r = await api.get(f"/rollouts/{rid}")
        assert r.json()["counts"] == {"rolled_back": 2, "pending": 3}
        r = await api.post(f"/rollouts/{rid}/abort")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "aborted"
        assert r.json()["counts"] == {"rolled_back": 2, "failed": 3}
        r = await api.post(f"/rollouts/{rid}/resume")
        assert r.status_code == 409
    finally:
        for b in boards:
            b.__exit__(None, None, None)
    rolled = [b for b in boards if b.crashes]
    assert len(rolled) == 2 and all(b.device.fw == "1.0.0" for b in boards)
    events = [e for e in await _firmware_events(api) if e["data"].get("rollout") == rid]
    actions = [e["data"]["action"] for e in events if "action" in e["data"]]
    assert actions == ["rollout_started", "rollout_halted", "abort"]


async def test_an_interrupted_transfer_resumes_through_the_gateway(
    api: httpx.AsyncClient, fw_gateway: Any, make_device: Callable[..., Any], tmp_path: Path
) -> None:
    (d,) = await _register(api, 1, "cut")
    version = await _add_release(api, "3.0.0", kb=48)
    with LinkProxy(fw_gateway.settings.mqtt.port) as link:
        ep = DeviceEndpoint(d["mqtt"]["host"], link.port, d["mqtt"]["ca_pem"], d["id"], d["token"])
        with Board(ep, tmp_path / "board", make_device, keepalive=4) as board:
            await _all_take_updates(api, [d["id"]])
            r = await api.post(f"/firmware/{version}/rollouts", json={"devices": [d["id"]]})
            rid = r.json()["id"]

            async def partway() -> bool:
                t = (await api.get(f"/rollouts/{rid}")).json()["targets"][0]
                return 8 * 1024 < t.get("bytes_confirmed", 0) < 40 * 1024

            await eventually(partway, timeout=60)
            link.cut()
            await asyncio.sleep(1.5)
            link.restore()
            done = await _rollout_until(api, rid, lambda b: b["state"] == "done", 90)
    assert done["targets"][0]["state"] == "applied"
    assert board.device.fw == version
    assert any("link lost" in x for x in board.logs)
    # resumed, not restarted: the second offer was answered from where the flash stood
    offers = [x for x in board.logs if f"update to {version} offered" in x]
    assert len(offers) == 1


async def _planty(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PLANTY_ADMIN_TOKEN": ADMIN, "COLUMNS": "200"}
    return await asyncio.to_thread(
        subprocess.run, [PLANTY, *args], capture_output=True, text=True, env=env, timeout=60
    )


async def test_the_cli_adds_the_device_folder_as_a_release_and_rolls_it_out(
    api: httpx.AsyncClient, fw_gateway: Any
) -> None:
    """`planty firmware add ./device --version ...`: the app files, never the boot guard."""
    url = ["--url", fw_gateway.api_url]
    version = "7.0." + uuid.uuid4().hex[:4]
    done = await _planty("firmware", "add", str(DEVICE_DIR), "--version", version, *url)
    assert done.returncode == 0, done.stderr
    assert "left out, never sent over the air: boot.py" in done.stdout
    r = await api.get(f"/firmware/{version}")
    names = {f["name"] for f in r.json()["files"]}
    assert names == {"main.py", "planty_cmds.py", "planty_device.py", "planty_ota.py"}
    again = await _planty("firmware", "add", str(DEVICE_DIR), "--version", version, *url)
    assert again.returncode != 0 and "immutable" in again.stdout + again.stderr
    (d,) = await _register(api, 1, "cli")
    started = await _planty("firmware", "rollout", version, "--devices", d["id"], *url)
    assert started.returncode == 0, started.stderr
    assert f"{version} to 1 device, waves [1]" in started.stdout
    rid = started.stdout.split(":")[0].split()[-1]
    shown = await _planty("firmware", "status", rid, *url)
    assert d["id"] in shown.stdout and "pending" in shown.stdout  # offline: it waits
    paused = await _planty("firmware", "pause", rid, *url)
    assert "paused" in paused.stdout
    aborted = await _planty("firmware", "abort", rid, *url)
    assert "aborted" in aborted.stdout
    events = [e for e in await _firmware_events(api) if e["data"].get("rollout") == int(rid)]
    actions = [e["data"]["action"] for e in events if "action" in e["data"]]
    assert actions == ["rollout_started", "pause", "abort"]


async def test_a_wave_of_vm_boards_whose_release_crashes_halts_the_rollout(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The same halt with the device code in the real MicroPython VM: boot.py's guard there."""
    if node() is None:
        pytest.skip("node is not installed: the MicroPython VM runs on Node")
    devices = await _register(api, 4, "vmhalt")
    ids = [d["id"] for d in devices]
    m = devices[0]["mqtt"]
    version = await _add_release(
        api, "6.0.0-bad", body="raise ImportError('no module named ds18x20')", kb=2
    )
    async with VmFleet(
        tmp_path, m["host"], m["port"], m["ca_pem"], [(d["id"], d["token"]) for d in devices]
    ) as vm:
        await _all_take_updates(api, ids)
        r = await api.post(f"/firmware/{version}/rollouts", json={"devices": ids, "first_wave": 1})
        rid = r.json()["id"]
        halted = await _rollout_until(api, rid, lambda b: b["state"] == "halted", 120)
        assert halted["reason"] == "wave 1: 1 of 1 failed or rolled back (more than 20%)"
        assert halted["counts"] == {"rolled_back": 1, "pending": 3}
        (first,) = [t for t in halted["targets"] if t["wave"] == 1]
        assert first["reason"] == "not online after 2 boots"
    crashed = [b for b in vm.result["boards"] if b["crashes"]]
    assert [b["id"] for b in crashed] == [first["device_id"]]
    assert len(crashed[0]["crashes"]) == 2 and "ds18x20" in crashed[0]["crashes"][0]
    assert all(b["fw"] == "1.0.0" for b in vm.result["boards"])
    r = await api.post(f"/rollouts/{rid}/abort")
    assert r.json()["counts"] == {"rolled_back": 1, "failed": 3}
