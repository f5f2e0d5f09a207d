"""The `planty` command against a running gateway: what a user types, what they see."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from planty_broker.app import Gateway
from tests.conftest import free_port
from tests.integration.core.conftest import ADMIN, unique_id

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PLANTY = str(Path(sys.executable).parent / "planty")


async def planty(*args: str, token: str = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PLANTY_ADMIN_TOKEN": token, "COLUMNS": "200"}
    return await asyncio.to_thread(
        subprocess.run, [PLANTY, *args], capture_output=True, text=True, env=env, timeout=60
    )


async def test_devices_add_list_show_remove(gateway: Gateway, tmp_path: Path) -> None:
    url = gateway.api_url
    device_id = unique_id("cli")
    r = await planty("devices", "add", device_id, "--url", url)
    assert r.returncode == 0, r.stderr
    creds = json.loads(r.stdout)
    assert creds["id"] == device_id and creds["token"] and creds["mqtt"]["tls"] is True
    assert "shown only once" in r.stderr

    secrets = tmp_path / "secrets.json"
    other = unique_id("cli")
    r = await planty(
        "devices",
        "add",
        other,
        "--url",
        url,
        "--export-device-config",
        str(secrets),
        "--wifi-ssid",
        "greenhouse",
    )
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    doc = json.loads(secrets.read_text())
    assert doc["device_id"] == other and doc["wifi"]["ssid"] == "greenhouse"
    assert doc["mqtt"]["prefix"] == "planty/v1"  # the board needs it when it is not the default
    assert doc["token"] and "BEGIN CERTIFICATE" in doc["mqtt"]["ca_pem"] and doc["mqtt"]["port"]
    assert doc["token"] not in r.stdout + r.stderr  # the token goes to the file only

    r = await planty("devices", "list", "--url", url)
    assert r.returncode == 0 and device_id in r.stdout and other in r.stdout
    r = await planty("devices", "show", device_id, "--url", url)
    assert json.loads(r.stdout)["id"] == device_id
    r = await planty("devices", "remove", device_id, "--url", url)
    assert r.returncode == 0 and "removed" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("devices", "show", "nope-404"), "no device with id"),
        (("devices", "add", "Bad Id"), "invalid"),
    ],
)
async def test_errors_are_one_line(gateway: Gateway, args: tuple[str, ...], needle: str) -> None:
    r = await planty(*args, "--url", gateway.api_url)
    assert r.returncode == 1
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


async def test_wrong_token_and_no_gateway_are_one_line(gateway: Gateway) -> None:
    r = await planty("devices", "list", "--url", gateway.api_url, token="wrong")
    assert r.returncode == 1 and "invalid or revoked token" in r.stderr
    r = await planty("devices", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert (
        r.returncode == 1 and "cannot reach the gateway" in r.stderr and "Traceback" not in r.stderr
    )


async def test_run_with_a_taken_port_says_which_setting(tmp_path: Path, gateway: Gateway) -> None:
    taken = int(gateway.api_url.rsplit(":", 1)[1])
    r = await planty(
        "run",
        "--data-dir",
        str(tmp_path),
        "--api-port",
        str(taken),
        "--mqtt-port",
        str(free_port()),
    )
    assert r.returncode == 1
    assert f"api.port {taken} is already in use" in r.stderr and "Traceback" not in r.stderr


async def test_run_with_a_bad_config_value_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "planty.toml"
    cfg.write_text("[mqtt]\nkeepalive_s = -1\n")
    r = await planty("run", "-c", str(cfg), "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "mqtt.keepalive_s" in r.stderr and "Traceback" not in r.stderr


async def test_devices_add_declares_up_front_and_writes_the_ca(
    gateway: Gateway, tmp_path: Path
) -> None:
    url = gateway.api_url
    device_id = unique_id("decl")
    ca_file = tmp_path / "ca.pem"
    r = await planty(
        "devices", "add", device_id, "--actuator", "pump", "--sensor", "soil_moisture",
        "--ca-file", str(ca_file), "--url", url,
    )
    assert r.returncode == 0, r.stderr
    assert "BEGIN CERTIFICATE" in ca_file.read_text()
    r = await planty("devices", "show", device_id, "--url", url)
    shown = json.loads(r.stdout)
    assert shown["actuators"] == ["pump"] and shown["sensors"] == ["soil_moisture"]
    r = await planty("commands", "send", device_id, "pump.on", "--url", url)
    assert r.returncode == 0 and "queued" in r.stdout, r.stdout + r.stderr  # before first contact
    r = await planty("devices", "add", unique_id("prof"), "--profile", "greenhouse", "--url", url)
    assert r.returncode == 0, r.stderr
    r = await planty("devices", "add", unique_id("bad"), "--profile", "castle", "--url", url)
    assert r.returncode == 1 and "no profile 'castle'" in r.stderr

    r = await planty("devices", "ca", "--url", url)  # `planty devices ca > ca.pem`
    assert r.returncode == 0 and r.stdout == ca_file.read_text()


async def test_an_unreachable_gateway_says_why(tmp_path: Path) -> None:
    refused = await planty("devices", "--url", f"http://127.0.0.1:{free_port()}")
    assert refused.returncode == 1
    assert "refused the connection" in refused.stderr, refused.stderr
    unresolved = await planty("devices", "--url", "http://no-such-host.invalid:8080")
    assert unresolved.returncode == 1
    assert "cannot resolve the host" in unresolved.stderr, unresolved.stderr
