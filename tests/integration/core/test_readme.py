"""The README's quick start with a real MQTT client (mosquitto_pub/sub) as a device, run as
written against a gateway (only the ports and the path of `planty` are replaced)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from planty_broker.app import Gateway
from tests.integration.core.conftest import ADMIN

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

REPO = Path(__file__).resolve().parents[3]
PLANTY = str(Path(sys.executable).parent / "planty")


def quickstart_device_block() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- quickstart-device[^>]*-->\s*```sh\n(.*?)```", text, re.S)
    assert m, "README.md lost its quickstart-device block"
    return m.group(1)


async def test_readme_mosquitto_device_next_to_the_simulator(
    gateway: Gateway, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    for tool in ("mosquitto_pub", "mosquitto_sub", "jq"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install mosquitto-clients jq)")
    mqtt_port = gateway.settings.mqtt.port
    script = (
        quickstart_device_block()
        .replace(".venv/bin/planty", PLANTY)
        .replace("-p 8883", f"-p {mqtt_port}")
        .replace("pot-1", "readme-pot-1")
    )
    env = {
        **os.environ,
        "PLANTY_ADMIN_TOKEN": ADMIN,
        "PLANTY_API_PORT": str(gateway.settings.api.port),
        "COLUMNS": "80",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cmd = json.loads((tmp_path / "cmd.json").read_text())
    assert cmd["action"] == "pump.on" and cmd["args"] == {"seconds": 5}
    r = await api.get(f"/api/v1/commands/{cmd['id']}")
    assert r.json()["state"] == "acked", r.text
    d = (await api.get("/api/v1/devices/readme-pot-1")).json()
    assert d["latest"]["readings"] == {"soil_moisture": 0.31}
    assert "acked" in done.stdout  # the last line of the block lists it
    assert "BEGIN CERTIFICATE" in (tmp_path / "ca.pem").read_text()
