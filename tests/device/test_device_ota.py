"""Updates over the air, the device half, against a real Mosquitto over TLS (docs/firmware.md).

The broker half is tests/device/ota_sender.py (the wire of docs/protocol.md "Updates");
the board is tests/device/board.py: flash is a folder and a reboot really runs what it holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.device.backend import MqttBackend
from tests.device.board import Board, app_source
from tests.device.broker import DeviceEndpoint
from tests.device.linkproxy import LinkProxy
from tests.device.ota_sender import Release, Sender

pytestmark = pytest.mark.integration


def _release(version: str, body: str = "", size: int = 6000) -> Release:
    blob = hashlib.sha256(version.encode()).hexdigest().encode() * (size // 64 + 1)
    return Release(
        version,
        (
            ("plant_app.py", app_source(version, body)),
            ("calibration.bin", blob[:size]),
            ("notes.txt", b"release " + version.encode()),
        ),
    )


async def _status_with(backend: MqttBackend, did: str, check: Callable[[Any], bool]) -> Any:
    return await backend.wait_for(
        lambda: next((s for s in reversed(backend.of(did, "status")) if check(s)), None),
        timeout=30,
        what="a status",
    )


def _installed(flash: Path, release: Release) -> bool:
    return all((flash / n).read_bytes() == b for n, b in release.files)


async def test_an_update_is_staged_checked_swapped_and_confirmed(
    make_device: Callable[..., Any],
    device_endpoint: DeviceEndpoint,
    backend: MqttBackend,
    tmp_path: Path,
) -> None:
    """With a corrupted chunk on the way: refused, fetched again, and the update still lands."""
    flash = tmp_path / "board"
    did = device_endpoint.device_id
    rel = _release("1.3.0")
    with Board(device_endpoint, flash, make_device) as board:
        first = await _status_with(backend, did, lambda s: s.get("online") is True)
        assert first["fw"] == "1.0.0" and first["ota"] == {"v": 1, "chunk": 1024}
        sender = Sender(backend, did, rel, t=7, chunk=512, corrupt={(1, 1024)})
        await sender.run(until=lambda: sender.outcome is not None)
        assert sender.outcome == {"t": 7, "op": "staged"}
        assert [(r["file"], r["offset"], r["err"]) for r in sender.refused] == [(1, 1024, "digest")]
        done = await _status_with(backend, did, lambda s: s.get("fw") == "1.3.0")
        assert done["ota"]["last"] == {"t": 7, "release": "1.3.0", "result": "applied"}
        assert board.boots == 2 and board.crashes == []
    assert _installed(flash, rel)
    assert (flash / "ota_prev" / "plant_app.py").read_bytes() == app_source("1.0.0")
    assert os.listdir(flash / "ota_new") == []
    state = json.loads((flash / "planty_ota.json").read_text())
    assert state["state"] == "done" and state["fw"] == "1.3.0"
    # every chunk went once, but the refused one twice
    assert sender.sent_chunks == sum(-(-len(b) // 512) for _, b in rel.files) + 1
    assert any("refused (digest)" in x for x in board.logs)


async def test_an_interrupted_transfer_resumes_where_it_stopped(
    make_device: Callable[..., Any],
    device_endpoint: DeviceEndpoint,
    backend: MqttBackend,
    link: LinkProxy,
    tmp_path: Path,
) -> None:
    """A link cut, then a reboot, in the middle: each time it goes on from the last chunk it had."""
    flash = tmp_path / "board"
    did = device_endpoint.device_id
    rel = _release("1.4.0", size=12000)
    with Board(device_endpoint, flash, make_device, keepalive=4) as board:
        await _status_with(backend, did, lambda s: s.get("online") is True)
        sender = Sender(backend, did, rel, t=9, chunk=512, retry_s=1.0)
        task = asyncio.create_task(sender.run(until=lambda: sender.outcome is not None))
        await backend.wait_for(lambda: sender.sent_chunks >= 6, what="6 chunks")
        link.cut()
        await asyncio.sleep(1.0)
        link.restore()
        await backend.wait_for(lambda: sender.sent_chunks >= 16, timeout=30, what="16 chunks")
        board.power_cut()
        await backend.wait_for(lambda: board.boots >= 2, timeout=30, what="a reboot")
        assert sender.outcome is None  # the reboot came in the middle of the transfer
        await task
        await _status_with(backend, did, lambda s: s.get("fw") == "1.4.0")
    assert _installed(flash, rel)
    assert board.boots == 3  # the power cut, then the switch to 1.4.0
    offsets = [(n["file"], n["offset"]) for n in sender.nexts]
    # never back to the start: each resume asks for what follows what is on flash
    assert offsets.count((0, 0)) == 1
    total = sum(len(b) for _, b in rel.files)
    assert sender.sent_chunks < total // 512 + 3 + 8  # at most a few chunks sent twice


async def test_a_release_that_crashes_at_boot_is_rolled_back_by_the_device(
    make_device: Callable[..., Any],
    device_endpoint: DeviceEndpoint,
    backend: MqttBackend,
    tmp_path: Path,
) -> None:
    flash = tmp_path / "board"
    did = device_endpoint.device_id
    rel = _release("2.0.0", body="raise RuntimeError('sensor driver missing')")
    with Board(device_endpoint, flash, make_device) as board:
        await _status_with(backend, did, lambda s: s.get("online") is True)
        sender = Sender(backend, did, rel, t=11, chunk=1024, max_boots=3)
        await sender.run(until=lambda: sender.outcome is not None)
        back = await _status_with(
            backend, did, lambda s: s.get("ota", {}).get("last", {}).get("t") == 11
        )
    assert back["fw"] == "1.0.0"
    assert back["ota"]["last"] == {
        "t": 11,
        "release": "2.0.0",
        "result": "rolled_back",
        "reason": "not online after 3 boots",
    }
    assert len(board.crashes) == 3 and "sensor driver missing" in board.crashes[0]
    assert (flash / "plant_app.py").read_bytes() == app_source("1.0.0")
    assert not (flash / "calibration.bin").exists()  # the release's own files are gone


async def test_a_release_that_never_comes_online_is_rolled_back_after_trial_s(
    make_device: Callable[..., Any],
    device_endpoint: DeviceEndpoint,
    backend: MqttBackend,
    tmp_path: Path,
) -> None:
    flash = tmp_path / "board"
    did = device_endpoint.device_id
    rel = _release("2.1.0", body="def setup(dev):\n    dev.token = 'wrong'\n")
    with Board(device_endpoint, flash, make_device) as board:
        await _status_with(backend, did, lambda s: s.get("online") is True)
        sender = Sender(backend, did, rel, t=12, chunk=1024, trial_s=2)
        await sender.run(until=lambda: sender.outcome is not None)
        back = await _status_with(
            backend, did, lambda s: s.get("ota", {}).get("last", {}).get("t") == 12
        )
    assert back["fw"] == "1.0.0"
    assert back["ota"]["last"]["result"] == "rolled_back"
    assert back["ota"]["last"]["reason"] == "not online within 2 s"
    assert any("refused" in x for x in board.logs)  # the new version tried, with its bad token
    assert board.crashes == []
