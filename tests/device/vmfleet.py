"""Boards in the real MicroPython VM, on real sockets to a real Mosquitto over TLS.

mpvm/fleet.py runs inside MicroPython 1.27 (WebAssembly) with the device files, the real
umqtt.simple 1.3.4 source and MicroPython 1.23+'s module layout (an `ssl` with SSLContext,
no `ussl`); mpvm/net.mjs gives it blocking sockets. One VM runs every board round-robin.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from tests.device import umqtt_source

HERE = Path(__file__).parent
MPVM = HERE / "mpvm"
DEVICE = HERE.parent.parent / "device"
DEVICE_FILES = ("planty_device.py", "planty_cmds.py", "planty_ota.py", "planty_boot.py")


def node() -> str | None:
    """Node, with the MicroPython VM's packages installed (once: pytest-xdist workers that
    need them at the same time wait for one `npm ci`, never run two in one folder)."""
    exe = shutil.which("node")
    if exe is None or (MPVM / "node_modules" / "@micropython").exists():
        return exe
    lock = Path(tempfile.gettempdir()) / f"planty-mpvm-{os.getuid()}.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not (MPVM / "node_modules" / "@micropython").exists():
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"], cwd=MPVM, check=True, capture_output=True
            )
    return exe


class VmFleet:
    """`async with VmFleet(...) as vm:` runs the boards; `vm.result` once it has stopped."""

    def __init__(
        self,
        folder: Path,
        host: str,
        port: int,
        ca_pem: str,
        devices: list[tuple[str, str]],
        version: str = "1.0.0",
        measure_heap: bool = False,
        max_chunk: int = 1024,
        device_files: dict[str, Path] | None = None,
    ) -> None:
        self.folder = folder
        self.stop_file = folder / ("stop-" + uuid.uuid4().hex[:6])
        cfg = {
            "host": host,
            "port": port,
            "ca_pem": ca_pem,
            "devices": devices,
            "version": version,
            "stop": str(self.stop_file),
            "heap": measure_heap,
            "max_chunk": max_chunk,
        }
        (folder / "cfg.json").write_text(json.dumps(cfg))
        files = device_files or {"/" + f: DEVICE / f for f in DEVICE_FILES}
        self.specs = [f"{dest}={src}" for dest, src in files.items()]
        self.specs += [
            f"/lib/umqtt/simple.py={umqtt_source.umqtt_path() / 'umqtt' / 'simple.py'}",
            f"/lib/socket.py={MPVM / 'lib' / 'socket.py'}",
            f"/lib/usocket.py={MPVM / 'lib' / 'usocket.py'}",
            f"/lib/ssl.py={MPVM / 'lib' / 'ssl.py'}",
            f"/cfg.json={folder / 'cfg.json'}",
        ]
        self.proc: asyncio.subprocess.Process | None = None
        self.result: dict[str, Any] = {}
        self.output = ""

    async def __aenter__(self) -> VmFleet:
        exe = node()
        assert exe is not None
        self.proc = await asyncio.create_subprocess_exec(
            exe,
            str(MPVM / "run.mjs"),
            str(MPVM / "fleet.py"),
            *self.specs,
            cwd=MPVM,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin"},
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.stop_file.touch()
        try:
            out, _ = await asyncio.wait_for(self.proc.communicate(), 60)
        except TimeoutError:
            self.proc.kill()
            out, _ = await self.proc.communicate()
        self.output = out.decode(errors="replace")
        lines = [x for x in self.output.splitlines() if x.startswith("RESULT ")]
        if exc[0] is not None:
            print("MicroPython VM output:\n" + self.output[-4000:])  # for the failing test
        else:
            assert self.proc.returncode == 0 and lines, self.output[-4000:]
        if lines:
            self.result = json.loads(lines[-1][len("RESULT ") :])
