"""The Firestore connector on the cluster (issue 15): one connector, on the lease holder;
the readings stored by either instance land in Firestore once each, and a new lease holder
goes on from the event-log cursor the last one confirmed.

On the folder's shared set-up (conftest.py) and a real Firestore emulator (the one of
tests/integration/firestore/conftest.py, started once for this worker). Both instances are
restarted with a `[firestore]` section and restarted again without it at the end, so the
next test finds the set-up as it was.
"""

from __future__ import annotations

import asyncio
import signal
import time
from types import ModuleType
from typing import Any

import pytest

from planty_broker.simulator.device import SimDevice
from tests.integration.cluster.conftest import restart
from tests.integration.cluster.test_cluster_stats import _stream, api, fleet_of
from tests.integration.firestore.conftest import (  # noqa: F401  (fixtures)
    PROJECT,
    Emulator,
    emulator,
    server_db,
    unique_broker,
)

pytestmark = pytest.mark.integration


async def _history(db: Any, broker_id: str, device_id: str) -> int:
    """Messages in the device's history buckets (every reading is in exactly one)."""
    col = db.collection(f"brokers/{broker_id}/devices/{device_id}/history")
    snaps = await asyncio.to_thread(lambda: list(col.stream()))
    return sum(int((s.to_dict() or {}).get("messages", 0)) for s in snaps)


async def _until_in_firestore(
    db: Any, broker_id: str, want: dict[str, int], timeout_s: float = 90
) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = {i: await _history(db, broker_id, i) for i in want}
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.5)


def _log(gw: Any) -> str:
    return str((gw.config.parent / "gateway.log").read_text(errors="replace"))


async def _restart_all(cl: ModuleType, c: Any) -> None:
    """Both instances again with their config as it is now: the worker first, then the
    holder (the lease moves once)."""
    holder = await cl.leader(c.gateways)
    for gw in [g for g in c.gateways if g is not holder] + [holder]:
        cl.gateway_kill(gw, signal.SIGTERM)
        await restart(cl, c, gw)
    await cl.leader(c.gateways)


@pytest.mark.timeout(600)
async def test_connector_runs_on_the_lease_holder_and_writes_every_reading_once(
    cluster: tuple[ModuleType, Any],
    emulator: Emulator,  # noqa: F811
    server_db: Any,  # noqa: F811
) -> None:
    cl, c = cluster
    broker_id = unique_broker()
    originals = {gw.index: gw.config.read_text() for gw in c.gateways}
    section = (
        "\n[firestore]\nenabled = true\n"
        f'emulator_host = "{emulator.host}"\nproject_id = "{PROJECT}"\n'
        f'broker_id = "{broker_id}"\nheartbeat_s = 1.0\nstats_every_s = 2.0\n'
    )
    up = f"firestore: broker document brokers/{broker_id} is up"
    fleet: list[SimDevice] = []
    try:
        for gw in c.gateways:
            gw.config.write_text(originals[gw.index] + section)
        await _restart_all(cl, c)
        holder = await cl.leader(c.gateways)
        (other,) = [g for g in c.gateways if g is not holder]

        fleet = await fleet_of(c, holder, "fs")
        for d in fleet:
            await d.start()

        acked = await _stream(fleet, 20)
        got = await _until_in_firestore(server_db, broker_id, acked)
        assert got == acked, (got, acked)  # not only the holder's share, none twice
        assert up in _log(holder)
        assert up not in _log(other)  # one connector: the worker has none

        # The holder stops cleanly (its last documents and cursor are confirmed); the next
        # holder starts the connector and goes on from that cursor.
        cl.gateway_kill(holder, signal.SIGTERM)
        try:
            assert await cl.leader([other], timeout_s=60) is other
            acked = await _stream(fleet, 10)
            got = await _until_in_firestore(server_db, broker_id, acked)
            assert got == acked, (got, acked)
            assert up in _log(other)
        finally:
            await restart(cl, c, holder)
    finally:
        for d in fleet:
            await d.stop()
        for gw in c.gateways:
            gw.config.write_text(originals[gw.index])
        await _restart_all(cl, c)
        async with api(c.gateways[0], c.token) as client:  # the log keeps nothing for it
            r = await client.delete("/events/consumers/firestore")
            assert r.status_code in (204, 404), r.text
