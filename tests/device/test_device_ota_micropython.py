"""Updates in the real MicroPython VM, on real sockets, against a real Mosquitto over TLS.

The VM is MicroPython 1.27 with no `ussl` and the real umqtt.simple 1.3.4: connecting at all
proves the issue-18 crash is gone. Its heap grows on demand (the WebAssembly build), so the
update's RAM is measured (gc.mem_alloc() after a collection, each loop pass) and held to a
budget, not capped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.device.backend import MqttBackend
from tests.device.board import app_source
from tests.device.broker import Mosquitto
from tests.device.linkproxy import LinkProxy
from tests.device.ota_sender import Release, Sender
from tests.device.pki import Pki
from tests.device.vmfleet import VmFleet, node

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _vm() -> None:
    if node() is None:
        pytest.skip("node is not installed: the MicroPython VM runs on Node")


def _release(version: str, body: str = "", size: int = 16000) -> Release:
    blob = hashlib.sha256(version.encode()).hexdigest().encode() * (size // 64 + 1)
    return Release(
        version, (("plant_app.py", app_source(version, body)), ("calibration.bin", blob[:size]))
    )


async def _status_with(
    vm: VmFleet, backend: MqttBackend, did: str, check: Callable[[Any], bool]
) -> Any:
    def found() -> Any:
        assert vm.alive(), "the MicroPython VM stopped"
        return next((s for s in reversed(backend.of(did, "status")) if check(s)), None)

    return await backend.wait_for(found, timeout=60, what="a status")


async def test_update_in_the_vm_within_the_esp32_heap_with_a_corrupted_chunk(
    mosquitto: Mosquitto,
    pki: Pki,
    device_id: str,
    token: str,
    backend: MqttBackend,
    link: LinkProxy,
    tmp_path: Path,
) -> None:
    """Connects with umqtt.simple 1.3.4 and no ussl, takes 16 KB in 1 KB chunks, cut once."""
    rel = _release("1.3.0")
    async with VmFleet(
        tmp_path,
        "localhost",
        link.port,
        pki.ca_pem,
        [(device_id, token)],
        measure_heap=True,
    ) as vm:
        first = await _status_with(vm, backend, device_id, lambda s: s.get("online") is True)
        assert first["fw"] == "1.0.0" and first["ota"]["v"] == 1
        sender = Sender(backend, device_id, rel, t=3, chunk=1024, corrupt={(1, 4096)})
        cut = False

        def until() -> bool:
            nonlocal cut
            if not cut and sender.sent_chunks >= 8:
                cut = True
                link.cut()
                link.restore()
            return sender.outcome is not None

        await sender.run(until=until, timeout=90)
        assert sender.outcome == {"t": 3, "op": "staged"}
        done = await _status_with(vm, backend, device_id, lambda s: s.get("fw") == "1.3.0")
        assert done["ota"]["last"]["result"] == "applied"
        assert vm.alive()
    r = vm.result
    assert r["ussl_lent"] is True  # umqtt.simple 1.3.4 asked for ussl, and got the device's
    board = r["boards"][0]
    assert board["boots"] == 2 and board["crashes"] == []
    assert [x["err"] for x in sender.refused] == ["digest"]
    assert any("link lost" in x for x in board["logs"]) or cut
    heap = r["heap"]
    # the update's own cost on top of an idle online device: one chunk, its hash, the manifest
    print("VM heap during update:", heap)
    assert heap["samples"] > 20  # measured all along the transfer
    # live heap between loop passes: the update keeps next to nothing (manifest, file, hash)
    assert heap["peak_live"] - heap["idle"] < 2 * 1024, heap
    # (what a pass allocates here is mostly the VM's socket stand-in: JSON and base64 per
    # read; the device code's own per-chunk cost is measured in test_device_on_micropython)


async def test_a_release_that_crashes_at_boot_is_rolled_back_in_the_vm(
    mosquitto: Mosquitto,
    pki: Pki,
    device_id: str,
    token: str,
    backend: MqttBackend,
    tmp_path: Path,
) -> None:
    rel = _release("2.0.0", body="raise ImportError('no module named sensors')", size=2000)
    async with VmFleet(
        tmp_path, "localhost", mosquitto.port, pki.ca_pem, [(device_id, token)]
    ) as vm:
        await _status_with(vm, backend, device_id, lambda s: s.get("online") is True)
        sender = Sender(backend, device_id, rel, t=5, chunk=1024, max_boots=2)
        await sender.run(until=lambda: sender.outcome is not None, timeout=60)
        back = await _status_with(
            vm, backend, device_id, lambda s: s.get("ota", {}).get("last", {}).get("t") == 5
        )
    assert back["fw"] == "1.0.0"
    assert back["ota"]["last"]["result"] == "rolled_back"
    assert back["ota"]["last"]["reason"] == "not online after 2 boots"
    crashes = vm.result["boards"][0]["crashes"]
    assert len(crashes) == 2 and "no module named sensors" in crashes[0]
