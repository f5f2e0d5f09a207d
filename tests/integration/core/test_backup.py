"""`planty backup` while readings pour in, then `planty restore` and a start: the devices,
tokens, rules, queued commands and readings are all there, and devices still connect
(the CA came back with the archive)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from planty_broker.storage.backup import BackupError, restore
from planty_broker.storage.sql import SqlStore
from tests.integration.core.conftest import (
    ADMIN,
    RawDevice,
    eventually,
    gateway_settings,
    running_gateway,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PLANTY = str(Path(sys.executable).parent / "planty")
RULE = {
    "id": "water",
    "devices": "bk-1",
    "reading": "soil_moisture",
    "op": "<",
    "threshold": 0.3,
    "action": "pump.on",
    "args": {"seconds": 5},
}


async def planty(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTY_")}
    return await asyncio.to_thread(
        subprocess.run, [PLANTY, *args], capture_output=True, text=True, env=env, timeout=120
    )


def client(url: str, token: str = ADMIN) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10, headers={"Authorization": f"Bearer {token}"})


async def store_counts(db: Path) -> tuple[int, int]:
    """Readings stored, and `reading` events in the event log (read as consumers do)."""
    with sqlite3.connect(db) as c:
        readings = c.execute("SELECT count(*) FROM readings").fetchone()[0]
    events, after = 0, 0
    async with SqlStore(f"sqlite:///{db}") as store:
        while page := await store.read_events(after, 5_000, ["reading"]):
            events += len(page)
            after = page[-1].id
    return readings, events


async def test_backup_while_ingest_runs_then_restore_and_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    archive = tmp_path / "backups" / "planty.tar.gz"
    async with running_gateway(gateway_settings(data)) as gw, client(gw.api_url) as api:
        creds = (await api.post("/api/v1/devices", json={"id": "bk-1"})).json()
        assert (await api.post("/api/v1/devices", json={"id": "bk-2"})).status_code == 201
        token = (await api.post("/api/v1/tokens", json={"name": "server", "scope": "read"})).json()
        assert (await api.post("/api/v1/rules", json=RULE)).status_code == 201
        queued = await api.post(
            "/api/v1/devices/bk-2/commands", json={"action": "read", "ttl_s": 86_400}
        )
        assert queued.status_code in (200, 201, 202), queued.text
        dev = RawDevice("bk-1", creds["token"], creds["mqtt"])
        await dev.connect()
        stop = asyncio.Event()

        async def pour() -> int:
            seq = 0
            # At most 9,000: the restored count is compared with one telemetry page (at most
            # 10,000); a slow `planty backup` under load once let 11,004 in before the snapshot.
            while not stop.is_set() and seq < 9_000:
                for _ in range(20):
                    body = {"seq": seq, "readings": {"soil_moisture": 0.5, "t": float(seq)}}
                    dev.publish("telemetry", json.dumps(body).encode())
                    seq += 1
                await asyncio.sleep(0.01)
            return seq

        pouring = asyncio.create_task(pour())
        try:
            await eventually(lambda: _stored(api, 200), timeout=20)
            r = await planty("backup", str(archive), "--data-dir", str(data))
            assert r.returncode == 0, r.stderr
            assert "backup written to" in r.stdout
            # a restore is refused while this gateway runs on the folder
            with pytest.raises(BackupError, match="a gateway is running"):
                restore(archive, data, force=True, now_ms=0)
            await eventually(lambda: _stored(api, 600), timeout=30)  # ingest went on
        finally:
            stop.set()
            await pouring
            await dev.close()

    # the snapshot is one committed state: each reading with its event, nothing half-written
    restored = tmp_path / "restored"
    r = await planty("restore", str(archive), "--data-dir", str(restored))
    assert r.returncode == 0, r.stderr
    readings, events = await store_counts(restored / "planty.sqlite3")
    assert 0 < readings == events
    assert (restored / "pki" / "ca.key").exists()
    assert oct((restored / "pki" / "ca.key").stat().st_mode)[-3:] == "600"
    assert not (restored / "mosquitto").exists()  # rebuilt at start from the store
    # into a folder that holds data: only with --force
    with pytest.raises(BackupError, match="--force"):
        restore(archive, data, force=False, now_ms=0)

    async with running_gateway(gateway_settings(restored)) as gw, client(gw.api_url) as api:
        ids = [d["id"] for d in (await api.get("/api/v1/devices")).json()["devices"]]
        assert ids == ["bk-1", "bk-2"]
        async with client(gw.api_url, token["token"]) as reader:  # the API token still works
            tel = await reader.get("/api/v1/devices/bk-1/telemetry", params={"limit": 10_000})
            # the newest 10,000 at most (the API's page): a fast machine stores more than that
            # before the backup is taken
            assert tel.status_code == 200 and tel.json()["count"] == min(readings, 10_000)
        assert [x["id"] for x in (await api.get("/api/v1/rules")).json()["rules"]] == ["water"]
        cmd = (await api.get(f"/api/v1/commands/{queued.json()['id']}")).json()
        assert cmd["state"] == "queued"  # still in the outbox, waiting for bk-2
        # the device connects with its old token and the CA it trusts: both came back
        dev = RawDevice("bk-1", creds["token"], creds["mqtt"] | {"port": gw.settings.mqtt.port})
        await dev.connect()
        try:
            dev.publish("telemetry", json.dumps({"seq": 10**6, "readings": {"t": 1.0}}).encode())
            await eventually(lambda: _newest_seq(api, 10**6), timeout=15)
        finally:
            await dev.close()


async def _newest_seq(api: httpx.AsyncClient, seq: int) -> bool:
    r = await api.get("/api/v1/devices/bk-1/telemetry", params={"limit": 1})
    return [x["seq"] for x in r.json()["readings"]] == [seq]


async def _stored(api: httpx.AsyncClient, n: int) -> bool:
    r = await api.get("/api/v1/devices/bk-1/telemetry", params={"limit": 10_000})
    return r.json()["count"] >= n

