"""`planty run` as a child process for the fleet benchmarks (registration, fleet list).

async with running_gateway(workdir) as gw:
    r = await gw.api.get("/api/v1/devices")
    gw.pid, gw.mosquitto_pid()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from measure import free_port

from planty_broker.mqttserver.process import mosquitto_directory


@dataclass
class RunningGateway:
    api: httpx.AsyncClient
    pid: int
    data_dir: Path

    def mosquitto_pid(self) -> int | None:
        path = mosquitto_directory(self.data_dir) / "mosquitto.pid"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split(":")[1].split()[0])
    return 0


@contextlib.asynccontextmanager
async def running_gateway(
    workdir: Path, extra_env: dict[str, str] | None = None
) -> AsyncIterator[RunningGateway]:
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - set-up
    data = workdir / "gateway"
    api_port, mqtt_port = free_port(), free_port()
    token = "bench-admin-" + os.urandom(8).hex()
    env = {
        **os.environ,
        "PLANTY_ADMIN_TOKEN": token,
        "PLANTY_MQTT_INTERNAL_PORT": str(free_port()),
        "PLANTY_MQTT_X509_PORT": str(free_port()),
        "PLANTY_MQTT_PUBLIC_HOST": "localhost",
        "PLANTY_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    planty = Path(sys.executable).parent / "planty"
    log_path = workdir / "gateway.log"
    log = log_path.open("wb")
    args = [str(planty), "run", "--data-dir", str(data), "--api-port", str(api_port)]
    args += ["--mqtt-port", str(mqtt_port)]
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api_port}",
            timeout=300,
            headers={"Authorization": f"Bearer {token}"},
        ) as api:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    body: dict[str, Any] = (await api.get("/healthz")).json()
                    if body.get("mqtt_connected"):
                        break
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            if proc.poll() is not None:
                raise SystemExit("gateway did not start:\n" + log_path.read_text()[-3000:])
            yield RunningGateway(api, proc.pid, data)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def import_devices(api: httpx.AsyncClient, ids: list[str]) -> list[tuple[str, str]]:
    """Register `ids` through the bulk import (10,000 per request); (id, token) of each."""
    out: list[tuple[str, str]] = []
    for at in range(0, len(ids), 10_000):
        rows = [{"id": i} for i in ids[at : at + 10_000]]
        r = await api.post("/api/v1/devices/import", json=rows)
        r.raise_for_status()
        body = r.json()
        if body["failed"]:
            raise SystemExit(f"import refused rows: {body['errors'][:3]}")
        out += [(d["id"], d["token"]) for d in body["devices"]]
    return out
