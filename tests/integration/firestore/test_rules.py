"""Rules from Firestore documents on a real emulator, driving the broker's rules service:
a rule document waters the simulated plant when its soil dries, an edited threshold acts on
the next reading, a deleted document removes the rule; device `thresholds` expand to rules."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.core.conftest import eventually
from tests.integration.firestore.conftest import Gateways, sim_device, unique_broker, wait_doc

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def pump_runs(dev: Any) -> list[Any]:
    return [e for e in dev.executions(action="pump.on") if e.source.value == "command"]


async def test_rule_document_waters_the_plant_and_a_threshold_edit_acts_at_once(
    gateways: Gateways, server_db: Any
) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    assert gw.services is not None
    rules = gw.services.rules
    # The pot dries fast (0.45 -> 0.30 in about 10 s of wall time).
    dev = await sim_device(gw, "fs-plant", interval_s=0.5, time_scale=1800)
    device_doc = f"brokers/{broker_id}/devices/fs-plant"
    await wait_doc(server_db, device_doc, lambda d: "pump" in d.get("actuators", []))
    rule_doc = f"brokers/{broker_id}/rules/water-when-dry"
    server_db.document(rule_doc).set(
        {
            "devices": ["fs-plant"],
            "reading": "soil_moisture",
            "op": "<",
            "threshold": 0.05,  # far drier than the pot gets in this test
            "action": "pump.on",
            "args": {"seconds": 1},
        }
    )
    applied = await wait_doc(server_db, rule_doc, lambda d: "applied" in d)
    assert applied["applied"]["ok"] is True, applied["applied"]
    assert rules.get("water-when-dry").origin == "firestore"
    await asyncio.sleep(2)  # a few readings, all above 0.05
    assert pump_runs(dev) == []

    server_db.document(rule_doc).update({"threshold": 0.40})  # the pot crosses this soon
    await eventually(lambda: pump_runs(dev), timeout=30)
    assert rules.get("water-when-dry").rule.threshold == 0.40
    fired = pump_runs(dev)[0]
    assert fired.args == {"seconds": 1}

    server_db.document(rule_doc).delete()
    await eventually(lambda: rules.get("water-when-dry") is None, timeout=10)


async def test_bad_rule_documents_get_the_reasons_written_back(
    gateways: Gateways, server_db: Any
) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    await sim_device(gw, "fs-rule-bad", interval_s=5)
    await wait_doc(
        server_db,
        f"brokers/{broker_id}/devices/fs-rule-bad",
        lambda d: "pump" in d.get("actuators", []),
    )
    rule_doc = f"brokers/{broker_id}/rules/no-sprinkler"
    server_db.document(rule_doc).set(
        {
            "devices": ["fs-rule-bad"],
            "reading": "soil_moisture",
            "op": "<",
            "threshold": 0.3,
            "action": "sprinkler.on",
        }
    )
    refused = await wait_doc(server_db, rule_doc, lambda d: "applied" in d)
    assert refused["applied"]["ok"] is False
    assert any("sprinkler" in r for r in refused["applied"]["reasons"])


async def test_device_thresholds_expand_to_rules(gateways: Gateways, server_db: Any) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    assert gw.services is not None
    rules = gw.services.rules
    await sim_device(gw, "fs-thr", interval_s=5)
    path = f"brokers/{broker_id}/devices/fs-thr"
    await wait_doc(server_db, path, lambda d: "pump" in d.get("actuators", []))
    server_db.document(path).update({"thresholds": {"soil_moisture": {"min": 0.3}}})
    done = await wait_doc(server_db, path, lambda d: "thresholds_applied" in d)
    assert done["thresholds_applied"]["ok"] is True, done["thresholds_applied"]
    assert rules.thresholds("fs-thr") == {"soil_moisture": {"min": 0.3}}
    server_db.document(path).update({"thresholds": {"soil_moisture": {"min": 0.2}}})
    await eventually(lambda: rules.thresholds("fs-thr") == {"soil_moisture": {"min": 0.2}})
    server_db.document(path).update({"thresholds": {"soil_moisture": {"min": 7}}})
    bad = await wait_doc(
        server_db, path, lambda d: d["thresholds_applied"]["ok"] is False, timeout=10
    )
    assert "0..1" in bad["thresholds_applied"]["error"]
    assert rules.thresholds("fs-thr") == {"soil_moisture": {"min": 0.2}}  # unchanged
