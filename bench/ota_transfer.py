"""Update transfer time: one board in the real MicroPython VM, a real Mosquitto over TLS.

Sends a release of --kb KB (the device app is about 40 KB as .py) at each chunk size and
prints the time from the offer to `staged`. The VM reaches its sockets through a Node
worker with JSON and base64 per read (tests/device/mpvm/net.mjs), which a board does not
pay, so these figures are slower than the same loop on an ESP32 over a fast link.
Run: `.venv/bin/python bench/ota_transfer.py [--kb 40] [--rounds 3]`. Stop and wait is
the design (one chunk in a device's RAM): the time is chunks x (round trip + the work).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tests.device.conftest  # noqa: E402, F401 - shims and the umqtt.simple source on sys.path
from measure import free_port, machine_line, pct  # noqa: E402
from tests.device.backend import MqttBackend  # noqa: E402
from tests.device.board import app_source  # noqa: E402
from tests.device.broker import Mosquitto  # noqa: E402
from tests.device.ota_sender import Release, Sender  # noqa: E402
from tests.device.pki import make_pki  # noqa: E402
from tests.device.vmfleet import VmFleet  # noqa: E402


async def run(kb: int, rounds: int, chunks: list[int]) -> None:
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pki = make_pki(folder / "pki")
        (folder / "mq").mkdir()
        mq = Mosquitto(folder / "mq", pki, free_port(), "admin", "admin-" + uuid.uuid4().hex)
        did, token = "plant-bench", uuid.uuid4().hex
        mq.users[did] = token
        mq.start()
        backend = MqttBackend("127.0.0.1", mq.port, pki.ca_pem, mq.admin_user, mq.admin_password)
        await backend.start()
        try:
            rtts = await _ping_rtts(backend, folder, mq.port, pki.ca_pem, did, token)
            print(
                f"baseline: a `ping` command round trip to the same VM board: median "
                f"{pct(rtts, 0.5) * 1000:.1f} ms, p90 {pct(rtts, 0.9) * 1000:.1f} ms"
            )
            for chunk in chunks:
                times: list[float] = []
                for r in range(rounds):
                    vm_dir = folder / f"vm-{chunk}-{r}"
                    vm_dir.mkdir()
                    version = f"9.{chunk}.{r}"
                    blob = hashlib.sha256(version.encode()).hexdigest().encode() * (kb * 16)
                    rel = Release(
                        version,
                        (("plant_app.py", app_source(version)), ("blob.bin", blob[: kb * 1024])),
                    )
                    async with VmFleet(
                        vm_dir, "localhost", mq.port, pki.ca_pem, [(did, token)], max_chunk=chunk
                    ):
                        await backend.wait_for(
                            lambda: any(s.get("online") for s in backend.of(did, "status")),
                            timeout=30,
                        )
                        backend.seen.clear()
                        sender = Sender(backend, did, rel, t=r + 1, chunk=chunk)
                        start = time.monotonic()
                        await sender.run(until=lambda s=sender: s.outcome is not None, timeout=300)
                        times.append(time.monotonic() - start)
                per_chunk = pct(times, 0.5) / (kb * 1024 / chunk)
                print(
                    f"{kb} KB at {chunk} B chunks: median {pct(times, 0.5):.2f} s "
                    f"({kb * 1024 / pct(times, 0.5) / 1024:.1f} KB/s, "
                    f"{per_chunk * 1000:.1f} ms per chunk = "
                    f"{per_chunk / pct(rtts, 0.5):.2f} ping round trips), "
                    f"rounds {[round(t, 2) for t in times]}"
                )
        finally:
            await backend.stop()
            mq.stop()


async def _ping_rtts(
    backend: MqttBackend, folder: Path, port: int, ca_pem: str, did: str, token: str
) -> list[float]:
    """The baseline: command round trips through the same Mosquitto to the same VM board."""
    vm_dir = folder / "vm-ping"
    vm_dir.mkdir()
    out: list[float] = []
    async with VmFleet(vm_dir, "localhost", port, ca_pem, [(did, token)]):
        await backend.wait_for(
            lambda: any(s.get("online") for s in backend.of(did, "status")), timeout=30
        )
        for _ in range(40):
            start = time.monotonic()
            await backend.command(did, "ping", timeout=10)
            out.append(time.monotonic() - start)
    backend.seen.clear()
    return out[5:]  # the first ones include the board's warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kb", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunks", default="512,1024,2048")
    a = ap.parse_args()
    asyncio.run(run(a.kb, a.rounds, [int(c) for c in a.chunks.split(",")]))


if __name__ == "__main__":
    main()
