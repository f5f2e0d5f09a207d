"""A reading is stored once through a real Mosquitto/TLS (issue 12): a device's re-send,
retained telemetry delivered again at every resubscribe, a clean stop under load."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from planty_broker.app import Gateway
from planty_broker.mqttserver.process import mosquitto_directory
from planty_broker.transport.mqtt import MqttLink
from tests.integration.core.conftest import RawDevice, eventually, unique_id
from tests.integration.core.proc import GatewayProcess

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def telemetry(seq: int, boot: int | None = 4) -> bytes:
    msg: dict[str, object] = {"seq": seq, "readings": {"light": float(seq)}}
    if boot is not None:
        msg["boot"] = boot
    return json.dumps(msg).encode()


async def test_redelivered_and_retained_telemetry_is_stored_once(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    svc = gateway.services
    assert svc is not None and isinstance(gateway.link, MqttLink)
    device_id = unique_id("once")
    made = (await api.post("/api/v1/devices", json={"id": device_id})).json()
    dev = RawDevice(device_id, made["token"], made["mqtt"])
    await dev.connect()
    ingest = svc.ingest
    try:
        dev.publish("status", b'{"online": true, "boot": 4}', retain=True)
        for seq in range(30):
            dev.publish("telemetry", telemetry(seq))
        for seq in range(30):  # the device sends them again (it missed the PUBACKs)
            dev.publish("telemetry", telemetry(seq))
        dev.publish("telemetry", telemetry(30), retain=True)  # retained: back at resubscribe

        async def stored() -> list[tuple[int | None, int]]:
            got = await svc.store.query_readings(device_id, None, None, 1000)
            return [(r.boot, r.seq) for r in got]

        duplicates = ingest.duplicates
        await eventually(lambda: ingest.duplicates >= duplicates + 30)
        assert sorted(await stored()) == [(4, s) for s in range(31)]

        # The gateway's link drops and comes back: it subscribes again, and the MQTT
        # server delivers the retained telemetry again. It is acknowledged, not stored.
        reconnects, duplicates = gateway.link.reconnects, ingest.duplicates
        gateway.link._client._connection._transport.abort()
        await eventually(lambda: gateway.link.reconnects > reconnects, timeout=20)
        await eventually(lambda: ingest.duplicates > duplicates, timeout=10)
        assert sorted(await stored()) == [(4, s) for s in range(31)]
        events = await svc.store.read_events(0, 100_000, ["reading"])
        assert sorted(e.data["seq"] for e in events if e.device_id == device_id) == list(range(31))
    finally:
        dev.publish("telemetry", b"", retain=True)  # clear the retained message
        await dev.close()


def _seqs(db: Path, device_id: str) -> list[int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT seq FROM readings WHERE device_id = ?", (device_id,))
        return [r[0] for r in rows]


async def test_a_clean_stop_under_load_neither_doubles_nor_loses(tmp_path: Path) -> None:
    """Telemetry without `boot` (so no unique key hides a double): the gateway stops
    cleanly in the middle of a backlog and starts again; every reading is there once."""
    n = 20_000
    gw = GatewayProcess(tmp_path / "data", "stop-admin-token-123456")
    db = tmp_path / "data" / "planty.sqlite3"
    dev: RawDevice | None = None
    try:
        await gw.start()
        async with gw.client() as api:
            creds = (await api.post("/api/v1/devices", json={"id": "stop-1"})).json()
        gw.kill9()  # Mosquitto stays up and queues for the gateway's persistent session
        dev = RawDevice("stop-1", creds["token"], creds["mqtt"])
        await dev.connect()
        for seq in range(n):
            dev.publish("telemetry", telemetry(seq, boot=None))
        await eventually(lambda: dev.client._persistent_storage.is_empty, timeout=60)

        await gw.start()  # adopts Mosquitto and takes the backlog at full speed
        at_stop = len(_seqs(db, "stop-1"))
        assert gw.stop() == 0  # SIGTERM: a clean stop while the backlog is being stored
        assert at_stop < n, "the backlog was stored before the stop: make n larger"

        await gw.start()
        await eventually(lambda: len(_seqs(db, "stop-1")) >= n, timeout=60)
        assert gw.stop() == 0
        seqs = _seqs(db, "stop-1")
        assert len(seqs) == n and sorted(seqs) == list(range(n))  # none twice, none lost
    finally:
        if dev:
            await dev.close()
        gw.cleanup()


async def test_the_gateway_session_is_saved_once_subscribed(tmp_path: Path) -> None:
    """Mosquitto writes its persistence file when the gateway's subscriptions are acknowledged
    (SIGUSR1), not only at its next autosave: a kill -9 of Mosquitto right after a first
    start still finds the gateway's session and queues the fleet's messages for it."""
    from tests.integration.core.conftest import gateway_settings, running_gateway

    settings = gateway_settings(tmp_path / "data")
    async with running_gateway(settings) as gw:
        assert gw.supervisor is not None
        # as root, Mosquitto's folder may be outside the data folder (least privilege)
        folder = mosquitto_directory(tmp_path / "data")
        await eventually((folder / "mosquitto.db").exists, timeout=20)  # autosave is 60 s
        log = (folder / "mosquitto.log").read_text()
        assert "Saving in-memory database" in log


async def test_a_restarted_mosquitto_keeps_the_gateway_session(tmp_path: Path) -> None:
    """kill -9 of the gateway and its Mosquitto, then a start: Mosquitto comes back from
    mosquitto.db with the gateway's session (offline, queueing for it). The gateway connects
    before the credential reload: a reload drops an offline restored session, and with it
    what devices sent in between (bench/soak.py lost 3 readings that way)."""
    import os
    import signal

    gw = GatewayProcess(tmp_path / "data", "mosq-admin-token-123456")
    try:
        await gw.start()
        folder = mosquitto_directory(tmp_path / "data")  # maybe outside (least privilege)
        log = folder / "mosquitto.log"
        await eventually((folder / "mosquitto.db").exists)
        mosquitto = gw.mosquitto_pid()
        assert mosquitto is not None
        gw.kill9()
        os.kill(mosquitto, signal.SIGKILL)
        await eventually(lambda: not Path(f"/proc/{mosquitto}").exists())
        await gw.start()
        text = log.read_text()
        after = text[text.rindex("starting") :]
        first = next(ln for ln in after.splitlines() if "planty-gateway" in ln)
        assert "New client connected" in first, after[:3000]
        assert gw.stop() == 0
    finally:
        gw.cleanup()
