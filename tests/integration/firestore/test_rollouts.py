"""Rollouts in Firestore under the broker's document, on a real emulator: the rollout's
state, each device's step with its reason, and the device document's last update."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from planty_broker.domain.firmware import TargetState
from tests.integration.firestore.conftest import Gateways, sim_device, unique_broker, wait_doc

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_a_rollout_and_each_device_step_are_mirrored(
    gateways: Gateways, server_db: Any
) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    assert gw.services is not None and gw.services.firmware is not None
    fw = gw.services.firmware
    good = await sim_device(gw, "fs-fw-good", interval_s=5, boot_s=0.1)
    bad = await sim_device(gw, "fs-fw-bad", interval_s=5, boot_s=0.1)
    bad.faults = dataclasses.replace(bad.faults, update_crash_rate=1.0)
    await fw.add_release("4.2.0", {"main.py": b"V = 42\n" * 100})
    r = await fw.start_rollout("4.2.0", devices=["fs-fw-good", "fs-fw-bad"], first_wave=2)

    base = f"brokers/{broker_id}"
    doc = await wait_doc(
        server_db,
        f"{base}/rollouts/{r.id}",
        lambda d: (
            len(d.get("devices", {})) == 2
            and all(s["state"] in ("applied", "rolled_back") for s in d["devices"].values())
            and d.get("state") == "halted"
        ),
        timeout=30,
    )
    assert doc["version"] == "4.2.0" and doc["waves"] == [2]
    assert doc["reason"].startswith("wave 1: ") and "of 2 failed or rolled back" in doc["reason"]
    assert doc["devices"]["fs-fw-good"]["state"] == TargetState.APPLIED.value
    step = doc["devices"]["fs-fw-bad"]
    assert step["state"] == "rolled_back" and step["reason"] == "not online after 3 boots"
    dev_doc = await wait_doc(
        server_db, f"{base}/devices/fs-fw-good", lambda d: "firmware" in d, timeout=15
    )
    assert dev_doc["firmware"]["version"] == "4.2.0" and dev_doc["firmware"]["state"] == "applied"
    assert good.fw == "4.2.0" and bad.fw != "4.2.0"
    await fw.abort(r.id)  # halted stays halted until the admin acts
    await wait_doc(server_db, f"{base}/rollouts/{r.id}", lambda d: d.get("state") == "aborted")
