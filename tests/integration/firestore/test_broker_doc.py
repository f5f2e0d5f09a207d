"""The broker's own document on a real Firestore emulator: created, heartbeat, offline at stop."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from planty_broker import __version__
from tests.integration.core.conftest import eventually
from tests.integration.firestore.conftest import PROJECT, Gateways, doc, unique_broker, wait_doc

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_broker_document_created_on_first_start_and_heartbeat_kept(
    gateways: Gateways, server_db: Any
) -> None:
    broker_id = unique_broker()
    path = f"brokers/{broker_id}"
    assert await doc(server_db, path) is None
    gw = await gateways.start(broker_id, heartbeat_s=1.0)
    first = await wait_doc(server_db, path, lambda d: d.get("online") is True)
    assert first["broker_id"] == broker_id
    assert first["software"] == {"name": "planty-broker", "version": __version__}
    assert first["config"]["heartbeat_s"] == 1.0  # defaults the server may edit
    assert first["owner"] is None  # not paired yet
    beat = first["heartbeat_at"]
    later = await wait_doc(server_db, path, lambda d: d["heartbeat_at"] > beat, timeout=20)
    assert later["online"] is True
    assert later["devices"] == {"total": 0, "online": 0}
    assert gw.services is not None
    assert gw.firestore.status()["reachable"] is True
    shown = [line for line in gateways.announced if line.lstrip().startswith("firestore:")]
    assert shown == [f"  firestore:     brokers/{broker_id} in project {PROJECT} emulator "
                     f"{gateways.emulator.host}"]  # fmt: skip

    await gateways.stop(gw)
    stopped = await doc(server_db, path)
    assert stopped is not None
    assert stopped["online"] is False
    assert stopped["stopped_at"] >= later["heartbeat_at"]


async def test_restart_keeps_the_config_the_server_edited(
    gateways: Gateways, server_db: Any
) -> None:
    broker_id = unique_broker()
    path = f"brokers/{broker_id}"
    gw = await gateways.start(broker_id, data="same")
    await wait_doc(server_db, path, lambda d: d.get("online") is True)
    await gateways.stop(gw)
    server_db.document(path).update({"config.heartbeat_s": 7})
    await gateways.start(broker_id, data="same")
    again = await wait_doc(server_db, path, lambda d: d.get("online") is True)
    assert again["config"]["heartbeat_s"] == 7
    assert (await wait_doc(server_db, path, lambda d: "config_applied" in d))["config_applied"][
        "ok"
    ] is True


async def test_misconfiguration_is_one_line_and_the_gateway_keeps_running(
    gateways: Gateways, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    missing = tmp_path / "no-such-key.json"
    gw = await gateways.start(unique_broker(), emulator_host="", credentials_file=str(missing))
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and "firestore" in r.getMessage()
    ]
    assert len(errors) == 1, errors
    assert "credentials_file" in errors[0] and str(missing) in errors[0]
    assert "\n" not in errors[0]
    assert gw.services is not None and gw.firestore is None
    async with httpx.AsyncClient(base_url=gw.api_url) as client:
        # keeps running: its MQTT link is (or, on a loaded machine, soon is) connected
        async def connected() -> bool:
            r = await client.get("/healthz")
            return r.status_code == 200 and r.json()["mqtt_connected"] is True

        await eventually(connected, timeout=30)
