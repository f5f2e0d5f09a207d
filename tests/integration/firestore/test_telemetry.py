"""Device documents and history on a real emulator, through a 30 s Firestore outage."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.firestore.conftest import (
    Emulator,
    Gateways,
    caught_up,
    doc,
    sim_device,
    unique_broker,
    wait_doc,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def history(db: Any, broker_id: str, device_id: str) -> list[dict[str, Any]]:
    col = db.collection(f"brokers/{broker_id}/devices/{device_id}/history")
    snaps = await asyncio.to_thread(lambda: list(col.stream()))
    return [s.to_dict() for s in snaps]


async def test_device_document_follows_telemetry_and_presence(
    gateways: Gateways, server_db: Any
) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    dev = await sim_device(gw, "fs-dev-live", interval_s=0.5)
    path = f"brokers/{broker_id}/devices/fs-dev-live"
    live = await wait_doc(server_db, path, lambda d: d.get("online") and d.get("seq", 0) >= 3)
    assert live["presence"] == "online"
    assert set(live["readings"]) >= {"temperature", "soil_moisture", "light"}
    assert live["actuators"] == ["pump", "lamp", "fan"] or "pump" in live["actuators"]
    await dev.kill()  # power cut: the last will fires
    gone = await wait_doc(server_db, path, lambda d: d.get("online") is False, timeout=20)
    assert gone["presence"] == "offline" and gone["presence_cause"] == "last_will"


async def test_outage_of_30_s_catches_up_nothing_lost_nothing_duplicated(
    gateways: Gateways, server_db: Any, emulator: Emulator
) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    assert gw.services is not None
    dev = await sim_device(gw, "fs-dev-outage", interval_s=0.2)
    path = f"brokers/{broker_id}/devices/fs-dev-outage"
    await wait_doc(server_db, path, lambda d: d.get("seq", 0) >= 2)

    before = len(await gw.services.store.query_readings("fs-dev-outage", None, None, 1_000_000))
    await emulator.outage(30)  # telemetry keeps flowing meanwhile
    # The listeners hear the server again: a command document written now is run.
    cmd = f"brokers/{broker_id}/commands/after-outage"
    server_db.document(cmd).set({"device_id": "fs-dev-outage", "action": "ping"})
    await wait_doc(server_db, cmd, lambda d: d.get("state") == "acked", timeout=30)
    await dev.stop()
    stored = await gw.services.store.query_readings("fs-dev-outage", None, None, 1_000_000)
    # readings flowed through the outage (~5 a second; how many depends on the machine's
    # load, so no fixed count: the exact checks below compare every one of them)
    assert len(stored) > before + 10
    await caught_up(gw, timeout=60)

    device = await doc(server_db, path)
    assert device is not None
    newest = max(stored, key=lambda r: (r.ts_ms, r.seq))
    assert device["seq"] == newest.seq
    assert device["readings"] == pytest.approx(newest.values)
    buckets = await history(server_db, broker_id, "fs-dev-outage")
    assert sum(b["messages"] for b in buckets) == len(stored)  # each reading exactly once
    for name in ("temperature", "soil_moisture", "light"):
        values = [r.values[name] for r in stored if name in r.values]
        assert sum(b["readings"][name]["count"] for b in buckets) == len(values)
        assert min(b["readings"][name]["min"] for b in buckets) == pytest.approx(min(values))
        assert max(b["readings"][name]["max"] for b in buckets) == pytest.approx(max(values))
        total = sum(b["readings"][name]["sum"] for b in buckets)
        assert total == pytest.approx(sum(values))
    status = gw.firestore.status()
    assert status["outages"] == 1, status  # it did notice, and it came back
    assert all(status["listeners"].values()), status  # listening again after the outage
