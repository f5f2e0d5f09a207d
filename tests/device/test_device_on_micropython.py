"""device/*.py on real MicroPython: compiled by mpy-cross 1.29 and run on the MicroPython VM (WebAssembly).

The VM has no sockets, so umqtt.simple is a recording stand-in there (mpvm/fake_umqtt.py);
the network half is tested under CPython against Mosquitto. This half proves the code
uses only what MicroPython has and measures its RAM on MicroPython's own heap.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
MPVM = HERE / "mpvm"
DEVICE = HERE.parent.parent / "device"
LIB = ("planty_device.py", "planty_cmds.py", "planty_ota.py", "planty_boot.py")
FILES = (*LIB, "main.py", "boot.py")
MPY_CROSS = shutil.which("mpy-cross") or str(Path(sys.executable).parent / "mpy-cross")


def _compile(src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MPY_CROSS, "-O2", "-o", str(out), str(src)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("name", FILES)
def test_micropython_compiler_accepts_the_file(name: str, tmp_path: Path) -> None:
    done = _compile(DEVICE / name, tmp_path / "out.mpy")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0


def test_micropython_compiler_rejects_what_micropython_lacks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    assert _compile(bad, tmp_path / "bad.mpy").returncode != 0


@pytest.fixture(scope="session")
def node() -> str:
    from tests.device.vmfleet import node as node_with_vm

    exe = node_with_vm()
    if exe is None:
        pytest.skip("node is not installed: the MicroPython VM runs on Node")
    return exe


def _run_vm(node: str, files: dict[str, Path], ca_file: Path) -> dict[str, Any]:
    specs = [f"{dest}={src}" for dest, src in files.items()]
    specs += [f"/umqtt/simple.py={MPVM / 'fake_umqtt.py'}", f"/ca.pem={ca_file}"]
    done = subprocess.run(
        [node, str(MPVM / "run.mjs"), str(MPVM / "device_check.py"), *specs],
        cwd=MPVM,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-2000:]
    return json.loads(lines[0][len("RESULT ") :])  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.device.pki import make_pki

    return make_pki(tmp_path_factory.mktemp("vm-pki")).ca_file


def test_device_logic_runs_on_micropython(node: str, ca_file: Path) -> None:
    r = _run_vm(node, {"/" + f: DEVICE / f for f in LIB}, ca_file)
    assert r["der_len"] > 100  # the CA PEM decoded with MicroPython's binascii
    assert r["readings"] == {"temperature": 21.5, "soil_moisture": 0.431, "light": 812}
    assert r["status"]["online"] is True and r["status"]["actuators"] == ["pump"]
    # the ring: 40 readings into 32 slots keeps the newest 32, oldest first
    assert (r["backlog"], r["dropped"]) == (32, 8)
    assert r["first_kept"]["seq"] == 8
    assert r["ping"] == {"id": "c-1", "ok": True}
    assert r["read"]["result"]["actuators"] == {"pump": 0}
    assert r["config"]["result"] == {"interval_s": 30}
    assert r["on"] == r["again"] == {"id": "c-4", "ok": True}
    assert (r["level_on"], r["level_later"], r["on_calls"]) == (1, 0, 1)
    assert r["expired"] == {"id": "c-5", "ok": False, "error": "expired"}
    assert r["unknown"]["error"] == "unknown action fan.on"
    assert r["no_id"] is None and r["bad_json"] is None
    # connection path: will first, subscribe before the retained status, backlog in order, ack
    events = r["events"]
    assert events[0][0] == "will" and events[0][2:] == ['{"online": false}', True, 1]
    kinds = [e[0] for e in events]
    first_ok = kinds.index("publish")
    assert kinds[first_ok - 1] == "subscribe"
    tele = [
        json.loads(e[2])["seq"] for e in events if e[0] == "publish" and e[1].endswith("telemetry")
    ]
    assert tele == sorted(tele) == list(range(len(tele)))
    assert [
        "publish",
        "planty/v1/devices/plant-mp-2/ack",
        '{"id": "c-9", "ok": true}',
        False,
        1,
    ] in events
    assert r["first_connect"] is False and r["backlog2"] == 0 and r["run_once"] is True
    assert kinds[-1] == "disconnect"
    # a clean shutdown: the retained goodbye protocol.md asks for, then DISCONNECT
    assert r["goodbye"] == [
        ["publish", "planty/v1/devices/plant-mp-2/status",
         '{"online": false, "reason": "shutdown"}', True, 1],
        ["disconnect"],
    ]
    assert r["goodbye_said"] is True and r["goodbye_connected"] is False
    # a reboot: boot count, interval and the dedup memory survive; the backlog is renumbered
    assert (r["boot2"], r["interval2"]) == (2, 30)
    assert r["restored"] == list(range(32))
    assert r["dup_after_reboot"] == r["unknown"]
    # an update: one `next` per chunk, then the switch (a reset into the trial)
    assert [json.loads(a) for a in r["ota_acks"]][:2] == [
        {"t": 4, "op": "next", "file": 0, "offset": 0},
        {"t": 4, "op": "next", "file": 0, "offset": 1024},
    ]
    assert (r["ota_resets"], r["ota_state"]) == (1, "trial")


def test_ram_on_the_micropython_heap_stays_within_budget(
    node: str, ca_file: Path, tmp_path: Path
) -> None:
    files = {}
    for f in LIB:
        out = tmp_path / f.replace(".py", ".mpy")
        assert _compile(DEVICE / f, out).returncode == 0
        files["/" + out.name] = out
    r = _run_vm(node, files, ca_file)
    # Upper bounds (this VM's collector keeps some garbage); docs/firmware.md has the breakdown.
    assert r["import_bytes"] < 24 * 1024  # both modules loaded from .mpy
    assert r["device_bytes"] < 12 * 1024  # a Device with 5 sensors, a pump, its 6 KB ring
    assert r["payload_len"] <= 192  # 5 readings + seq + ts fit one default ring slot
    # all one chunk's handling allocates (1 KB frame already received): its digest and
    # hash, the file write, the `next` ack; the frame itself is the other 1 KB in hand
    assert max(r["ota_chunk_alloc"]) < 3 * 1024, r["ota_chunk_alloc"]
    print("per chunk", r["ota_chunk_alloc"])
    # exact, live: each module's RAM once imported from .mpy (docs/firmware.md's table)
    done = subprocess.run(
        [node, str(MPVM / "weigh.mjs"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    live = json.loads(done.stdout)
    print("live after import:", live)
    assert live["planty_device"] + live["planty_cmds"] < 20 * 1024
    assert live["planty_ota"] + live["planty_boot"] < 12 * 1024
