"""Two gateways from one checkout, side by side, with only the README's flags.

`planty run --data-dir DIR --api-port N --mqtt-port M` and nothing else: the ports
nobody asked for (the gateway's own MQTT listener, the X.509 listener) are picked
per data folder and recorded, so the second instance starts too, even when its
device port is the first one's device port + 1 (the old X.509 default).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from planty_broker.mqttserver.ports import LOWEST_PICK
from tests.conftest import free_port
from tests.integration.core.conftest import RawDevice, eventually
from tests.integration.core.proc import GatewayProcess
from tests.integration.identity.conftest import tls, try_login

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

README_ONLY = ("PLANTY_MQTT_INTERNAL_PORT", "PLANTY_MQTT_X509_PORT", "PLANTY_MQTT_PUBLIC_HOST",
               "PLANTY_ADMIN_TOKEN", "PLANTY_MQTT_KEEPALIVE_S")


def two_free_ports_in_a_row() -> int:
    for _ in range(200):
        port = free_port()
        if port < 65535:
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two free ports in a row")


def readme_gateway(data_dir: Path, mqtt_port: int) -> GatewayProcess:
    gw = GatewayProcess(data_dir, "")
    for key in README_ONLY:
        gw.env.pop(key, None)
    gw.mqtt_port = mqtt_port
    return gw


async def test_two_instances_start_side_by_side_with_only_the_readme_flags(
    tmp_path: Path,
) -> None:
    first = two_free_ports_in_a_row()
    a = readme_gateway(tmp_path / "a", first)
    b = readme_gateway(tmp_path / "b", first + 1)  # a's X.509 port under the old rule
    devices: list[RawDevice] = []
    try:
        await a.start()
        await b.start()
        recorded = [json.loads((g.data_dir / "ports.json").read_text()) for g in (a, b)]
        ports = [
            (g.api_port, g.mqtt_port, r["mqtt.internal_port"], r["mqtt.x509_port"])
            for g, r in zip((a, b), recorded, strict=True)
        ]
        every = [p for four in ports for p in four]
        assert len(set(every)) == len(every), ports  # nothing shared between the two
        for g, r in zip((a, b), recorded, strict=True):
            assert "/dashboard" in g.log_tail()
            assert "mqtts://" in g.log_tail() and str(r["mqtt.x509_port"]) in g.log_tail()

        for name, g in (("side-a", a), ("side-b", b)):
            g.admin_token = (g.data_dir / "admin-token").read_text().strip()
            async with g.client() as api:
                r = await api.post("/api/v1/devices", json={"id": name})
                assert r.status_code in (200, 201), r.text
                creds = r.json()
            dev = RawDevice(name, creds["token"], {**creds["mqtt"], "host": "localhost"})
            devices.append(dev)
            await dev.connect()
            dev.publish("status", json.dumps({"online": True, "interval_s": 60}).encode(),
                        retain=True)
            async with g.client() as api:

                async def online(api: object = api, name: str = name) -> bool:
                    r = await api.get(f"/api/v1/devices/{name}")  # type: ignore[attr-defined]
                    return bool(r.json()["presence"]["state"] == "online")

                await eventually(online, timeout=20)

        # A restart keeps the recorded ports (devices were told the X.509 one).
        assert a.stop() == 0
        await a.start()
        assert json.loads((a.data_dir / "ports.json").read_text()) == recorded[0]
    finally:
        for dev in devices:
            await dev.close()
        a.cleanup()
        b.cleanup()


async def test_an_old_data_folder_keeps_its_x509_port_and_a_new_one_picks(tmp_path: Path) -> None:
    """Upgrade: a data folder from before ports.json keeps mqtt.port + 1 for X.509.

    The old version is played by a run with that version's fixed ports set explicitly
    (X.509 on mqtt.port + 1; nothing recorded). A device got a certificate for that
    port. The next start with only the README's flags must keep serving it there, and
    record it; a new data folder on the same flags picks its ports instead.
    """
    port = two_free_ports_in_a_row()
    old = readme_gateway(tmp_path / "old", port)
    old.env["PLANTY_MQTT_X509_PORT"] = str(port + 1)
    old.env["PLANTY_MQTT_INTERNAL_PORT"] = str(free_port())
    old.env["PLANTY_MQTT_PUBLIC_HOST"] = "localhost"
    new = readme_gateway(tmp_path / "new", two_free_ports_in_a_row())
    try:
        await old.start()
        assert not (old.data_dir / "ports.json").exists()
        old.admin_token = (old.data_dir / "admin-token").read_text().strip()
        async with old.client() as api:
            r = await api.post("/api/v1/devices", json={"id": "field-pot"})
            assert r.status_code in (200, 201), r.text
            r = await api.post("/api/v1/devices/field-pot/credentials", json={"type": "x509"})
            assert r.status_code == 201, r.text
            issued = r.json()
        assert issued["mqtt"]["port"] == port + 1
        cert, key = write_pem(tmp_path, "field-pot", issued["cert_pem"], issued["key_pem"])
        ctx = tls(issued["mqtt"]["ca_pem"], cert, key)
        assert await try_login("localhost", port + 1, ctx, "field-pot", None) == "accepted"
        assert old.stop() == 0

        # The upgrade: the same data folder, only the README's flags.
        for key_name in ("PLANTY_MQTT_X509_PORT", "PLANTY_MQTT_INTERNAL_PORT",
                         "PLANTY_MQTT_PUBLIC_HOST"):
            old.env.pop(key_name)
        await old.start()
        recorded = json.loads((old.data_dir / "ports.json").read_text())
        assert recorded["mqtt.x509_port"] == port + 1, old.log_tail()
        assert f":{port + 1}" in old.log_tail()  # the banner's X.509 listener
        assert await try_login("localhost", port + 1, ctx, "field-pot", None) == "accepted"
        async with old.client() as api:
            r = await api.get("/api/v1/devices/field-pot/credentials")
            assert r.status_code == 200, r.text
        assert old.stop() == 0

        # A new data folder on the same flags picks (and records) its own.
        await new.start()
        picked = json.loads((new.data_dir / "ports.json").read_text())
        assert picked["mqtt.x509_port"] not in (new.mqtt_port + 1, port + 1)
        assert picked["mqtt.x509_port"] >= LOWEST_PICK
    finally:
        old.cleanup()
        new.cleanup()


def write_pem(folder: Path, name: str, cert: str, key: str) -> tuple[Path, Path]:
    c, k = folder / f"{name}.pem", folder / f"{name}.key"
    c.write_text(cert)
    k.write_text(key)
    k.chmod(0o600)
    return c, k
