"""A real Firestore server for the connector's tests: Google's emulator, one per session.

Google's Cloud Firestore emulator (Debian package google-cloud-cli-firestore-emulator)
runs with java directly on a free port, with this repo's firestore.rules; where
it is missing, the npm package @firestore-emulator/server (tests/integration/
firestore/npm-emulator, installed by `bin/setup --dev`) stands in. Tests use a
unique broker id each, so they never see each other's documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from planty_broker.app import Gateway
from planty_broker.config import FirestoreSettings
from tests.conftest import free_port
from tests.integration.core.conftest import gateway_settings

REPO = Path(__file__).resolve().parents[3]
JAR = Path(
    os.environ.get(
        "PLANTY_FIRESTORE_EMULATOR_JAR",
        "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
    )
)
NPM_DIR = Path(__file__).parent / "npm-emulator"
RULES = REPO / "deploy" / "firestore" / "firestore.rules"
PROJECT = "demo-planty-test"


class Emulator:
    """One emulator process on a fixed port; `outage()` takes it away and brings it back."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind  # "java" or "npm"
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "emulator.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, seed: Path | None = None) -> None:
        if self.kind == "java":
            cmd = [
                "java", "-Duser.language=en", "-cp", str(JAR),
                "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
                "--host", "127.0.0.1", "--port", str(self.port), "--rules", str(RULES),
            ]  # fmt: skip
            if seed is not None:
                cmd += ["--seed_from_export", str(seed)]
        else:
            cmd = ["node", str(NPM_DIR / "run.mjs"), str(self.port)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited: {self.log.read_text()[-2000:]}")
            if self.kind == "java":
                url = f"http://{self.host}/"
                with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                    if r.read().strip() == b"Ok":
                        return
            elif b"ready on" in self.log.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"emulator not ready in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def export(self) -> Path:
        """Java emulator: write its data to a folder (its export endpoint); returns the seed."""
        target = self.folder / f"export-{uuid.uuid4().hex[:8]}"
        target.mkdir()
        body = (
            f'{{"database": "projects/{PROJECT}/databases/(default)", '
            f'"export_directory": "{target}"}}'
        ).encode()
        req = urllib.request.Request(
            f"http://{self.host}/emulator/v1/projects/{PROJECT}:export",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
        return next(target.rglob("*.overall_export_metadata"))

    async def outage(self, seconds: float) -> None:
        """Firestore gone for `seconds`, data kept: the Java emulator is stopped and restarted
        from an export; the npm one (no export) is frozen with SIGSTOP and thawed."""
        if self.kind == "java":
            seed = await asyncio.to_thread(self.export)
            await asyncio.to_thread(self.stop)
            await asyncio.sleep(seconds)
            await asyncio.to_thread(self.start, seed)
        else:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(seconds)
            self.proc.send_signal(signal.SIGCONT)


def _kind() -> str | None:
    wanted = os.environ.get("PLANTY_FIRESTORE_EMULATOR", "")  # "java" / "npm": force one
    if wanted == "npm" and (NPM_DIR / "node_modules" / "@firestore-emulator").is_dir():
        return "npm"
    if JAR.is_file() and shutil.which("java"):
        return "java"
    if shutil.which("node") and (NPM_DIR / "node_modules" / "@firestore-emulator").is_dir():
        return "npm"
    return None


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    kind = _kind()
    if kind is None:
        pytest.skip(
            "no Firestore emulator: install google-cloud-cli-firestore-emulator (and java) or "
            "run `bin/setup --dev` for the npm fallback"
        )
    emu = Emulator(kind, tmp_path_factory.mktemp("firestore-emulator"))
    emu.start()
    _warm_up(emu)
    yield emu
    emu.stop()


def _warm_up(emu: Emulator) -> None:
    """A cold Java emulator may drop a change that lands while its first listeners attach
    (seen here on the first test of a session); one listen-and-write round trip warms it."""
    from planty_broker.northbound.firestore.google_port import make_client

    client = make_client(FirestoreSettings(emulator_host=emu.host, project_id=PROJECT))
    try:
        for attempt in range(5):
            seen = threading.Event()
            col = client.collection(f"warm-up/{attempt}/docs")
            watch = col.on_snapshot(lambda _docs, changes, _t: seen.set() if changes else None)
            time.sleep(0.5)
            col.document("x").set({"n": attempt})
            ok = seen.wait(5)
            watch.close()
            if ok:
                return
    finally:
        client.close()


def unique_broker() -> str:
    return f"broker-{uuid.uuid4().hex[:10]}"


def fs_settings(emulator: Emulator, broker_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "emulator_host": emulator.host,
        "project_id": PROJECT,
        "broker_id": broker_id,
        "heartbeat_s": 1.0,
        "stats_every_s": 2.0,
        "timeout_s": 10.0,
        **extra,
    }


@pytest.fixture
def server_db(emulator: Emulator) -> Iterator[Any]:
    """The Planty server's side: a plain Google client on the emulator."""
    from planty_broker.northbound.firestore.google_port import make_client

    client = make_client(FirestoreSettings(emulator_host=emulator.host, project_id=PROJECT))
    yield client
    client.close()


class Gateways:
    """Gateways with the connector on, each in its own data folder; stopped at test end."""

    def __init__(self, folder: Path, emulator: Emulator) -> None:
        self._folder = folder
        self.emulator = emulator
        self._running: dict[int, Gateway] = {}
        self.announced: list[str] = []  # what `planty run` would print

    async def start(self, broker_id: str, data: str | None = None, **firestore: Any) -> Gateway:
        """Start one; the same `data` name reuses a data folder (a restart)."""
        settings = gateway_settings(
            self._folder / (data or f"gw-{uuid.uuid4().hex[:6]}"),
            firestore=fs_settings(self.emulator, broker_id, **firestore),
        )
        gw = Gateway(settings, announce=self.announced.append)
        await gw.__aenter__()
        self._running[id(gw)] = gw
        return gw

    async def stop(self, gw: Gateway) -> None:
        """Stop one (a test's restart, or the fixture's end); a stop that hangs fails."""
        if self._running.pop(id(gw), None) is not None:
            stopping = asyncio.create_task(gw.__aexit__(None, None, None), name="gateway-stop")
            await asyncio.wait({stopping}, timeout=STOP_TIMEOUT_S)
            if not stopping.done():
                why = _waiting(stopping)
                stopping.cancel()
                raise AssertionError(f"a gateway did not stop within {STOP_TIMEOUT_S} s; {why}")
            stopping.result()

    async def stop_all(self) -> None:
        for gw in list(self._running.values()):
            await self.stop(gw)


STOP_TIMEOUT_S = 90.0  # a gateway's stop takes a few seconds; a hang is a bug to see


def _awaiting(coro: Any) -> str:
    """Where a coroutine waits, down its whole await chain (a task's own stack shows
    only its outermost frame)."""
    lines = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            lines.append(f"  awaiting {coro!r}"[:300])
            break
        lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return "\n".join(lines)


def _waiting(stopping: asyncio.Task[Any]) -> str:
    """What the stop, every other asyncio task and every thread waits on: a stop that hung
    (seen a few times under load, test timeout 300 s) says where, rather than hanging."""
    buf = io.StringIO()
    buf.write(f"the stop waits at:\n{_awaiting(stopping.get_coro())}\ntasks:\n")
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task() and task is not stopping:
            buf.write(f"task {task.get_name()}:\n{_awaiting(task.get_coro())}\n")
    # ... and every thread (a close blocked in the Google client is on one of them).
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        buf.write(f"thread {names.get(ident, ident)}:\n")
        buf.write("".join(traceback.format_stack(frame, limit=6)))
    return buf.getvalue()


@pytest_asyncio.fixture(loop_scope="session")
async def gateways(tmp_path: Path, emulator: Emulator) -> AsyncIterator[Gateways]:
    g = Gateways(tmp_path, emulator)
    try:
        yield g
    finally:
        await g.stop_all()


async def doc(db: Any, path: str) -> dict[str, Any] | None:
    snap = await asyncio.to_thread(db.document(path).get)
    return snap.to_dict() if snap.exists else None


async def wait_doc(
    db: Any, path: str, check: Callable[[dict[str, Any]], Any], timeout: float = 15.0
) -> dict[str, Any]:
    """Poll a document until `check(fields)` is truthy; fail with its last content."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = await doc(db, path)
        if last is not None and check(last):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} not as expected within {timeout} s; last: {last!r}")


async def sim_device(gw: Gateway, device_id: str, **profile: Any) -> Any:
    """Register `device_id` through the API and boot a simulated ESP32 with its credentials."""
    import httpx

    from planty_broker.simulator.device import SimDevice
    from planty_broker.simulator.profile import DeviceCredentials, DeviceProfile
    from tests.integration.core.conftest import ADMIN

    async with httpx.AsyncClient(
        base_url=gw.api_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    ) as api:
        r = await api.post("/api/v1/devices", json={"id": device_id})
        assert r.status_code == 201, r.text
        body = r.json()
    creds = DeviceCredentials(
        device_id=device_id,
        token=body["token"],
        host=body["mqtt"]["host"],
        port=body["mqtt"]["port"],
        tls=True,
        ca_pem=body["mqtt"]["ca_pem"],
    )
    dev = SimDevice(creds, DeviceProfile(**profile), seed=7)
    await dev.start()
    await dev.wait_online(15)
    return dev


async def caught_up(gw: Gateway, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the connector has confirmed every event and written every document."""
    assert gw.services is not None
    conn = gw.firestore
    events = gw.services.events
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = (await events.bounds()).last_id
        status = conn.status()
        if status["reachable"] and status["cursor"] == last and not status["pending_documents"]:
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"connector did not catch up in {timeout} s: {status}")
