"""Command documents on a real emulator: the server writes one, the device acks, the result
comes back into the same document; refusals and cancellations are written back too."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.firestore.conftest import Gateways, sim_device, unique_broker, wait_doc

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_command_document_runs_once_and_gets_its_result(
    gateways: Gateways, server_db: Any
) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    dev = await sim_device(gw, "fs-cmd-dev", interval_s=5)
    base = f"brokers/{broker_id}/commands"

    server_db.document(f"{base}/read-1").set({"device_id": "fs-cmd-dev", "action": "read"})
    done = await wait_doc(server_db, f"{base}/read-1", lambda d: d.get("state") == "acked")
    assert set(done["result"]["readings"]) >= {"temperature", "soil_moisture", "light"}
    assert done["attempts"] == 1 and done["rtt_ms"] >= 0
    assert done["queued_at"] <= done["sent_at"] <= done["final_at"] < done["expire_at"]
    assert done["device_id"] == "fs-cmd-dev" and done["action"] == "read"  # the server's fields

    server_db.document(f"{base}/pump-1").set(
        {"device_id": "fs-cmd-dev", "action": "pump.on", "args": {"seconds": 2}}
    )
    await wait_doc(server_db, f"{base}/pump-1", lambda d: d.get("state") == "acked")
    runs = dev.executions(command_id="pump-1")
    assert [e.action for e in runs] == ["pump.on"]  # the id is the document id, run once


async def test_bad_command_documents_are_refused_with_the_reason(
    gateways: Gateways, server_db: Any
) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    await sim_device(gw, "fs-cmd-bad", interval_s=5)
    device = f"brokers/{broker_id}/devices/fs-cmd-bad"
    await wait_doc(server_db, device, lambda d: "pump" in d.get("actuators", []))
    base = f"brokers/{broker_id}/commands"
    server_db.document(f"{base}/jump").set({"device_id": "fs-cmd-bad", "action": "jump"})
    server_db.document(f"{base}/nobody").set({"device_id": "no-such-device", "action": "ping"})
    jump = await wait_doc(server_db, f"{base}/jump", lambda d: d.get("state") == "rejected")
    assert "pump.on" in jump["error"]  # it lists what is valid
    nobody = await wait_doc(server_db, f"{base}/nobody", lambda d: d.get("state") == "rejected")
    assert "no-such-device" in nobody["error"]


async def test_deleting_a_queued_command_document_cancels_it(
    gateways: Gateways, server_db: Any
) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    assert gw.services is not None
    dev = await sim_device(gw, "fs-cmd-off", interval_s=5)
    await dev.stop()  # offline: commands wait in the outbox
    base = f"brokers/{broker_id}/commands"
    server_db.document(f"{base}/later").set({"device_id": "fs-cmd-off", "action": "ping"})
    await wait_doc(server_db, f"{base}/later", lambda d: d.get("state") == "queued")
    server_db.document(f"{base}/later").delete()
    commands = gw.services.commands

    async def cancelled() -> bool:
        rec = await commands.get("later")
        return rec is not None and rec.state.value == "cancelled"

    from tests.integration.core.conftest import eventually

    await eventually(cancelled, timeout=10)
