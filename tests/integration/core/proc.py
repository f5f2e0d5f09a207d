"""A gateway in its own process (`planty run`), for crash and restart tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from planty_broker.mqttserver.process import mosquitto_directory
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[3]
PLANTY = Path(sys.executable).parent / "planty"


class GatewayProcess:
    """`planty run` on free ports with a given data folder; restartable on the same ports."""

    def __init__(self, data_dir: Path, admin_token: str, **env: str) -> None:
        self.data_dir = data_dir
        self.admin_token = admin_token
        self.api_port = free_port()
        self.mqtt_port = free_port()
        self.internal_port = free_port()
        self.x509_port = free_port()
        self.env = {
            **os.environ,
            "PLANTY_ADMIN_TOKEN": admin_token,
            "PLANTY_MQTT_INTERNAL_PORT": str(self.internal_port),
            "PLANTY_MQTT_X509_PORT": str(self.x509_port),
            "PLANTY_MQTT_PUBLIC_HOST": "localhost",
            "PLANTY_MQTT_KEEPALIVE_S": "5",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "gateway-test.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    async def start(self, timeout: float = 30) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(PLANTY), "run", "--data-dir", str(self.data_dir), "--api-port", str(self.api_port),
             "--mqtt-port", str(self.mqtt_port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    r = await client.get(f"{self.api_url}/healthz", timeout=1)
                    if r.status_code == 200 and r.json().get("mqtt_connected"):
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"gateway did not become healthy in {timeout} s: {self.log_tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def mosquitto_pid(self) -> int | None:
        pid_file = mosquitto_directory(self.data_dir) / "mosquitto.pid"
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        """Stop the gateway and any Mosquitto it left behind."""
        if self.proc and self.proc.poll() is None:
            self.stop()
        pid = self.mosquitto_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return "(no log)"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api_url, timeout=10,
                                 headers={"Authorization": f"Bearer {self.admin_token}"})
