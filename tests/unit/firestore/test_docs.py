"""docs/firestore.md stays true: every setting is documented, the examples parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

from planty_broker.config import FirestoreSettings
from planty_broker.domain.rules.model import parse_rule
from planty_broker.domain.rules.thresholds import thresholds_to_rules

DOC = (Path(__file__).resolve().parents[3] / "docs" / "firestore.md").read_text()


def test_every_setting_is_in_the_table_and_no_other() -> None:
    table = DOC.split("## Switching it on")[1].split("## Document model")[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \| `", table, flags=re.MULTILINE))
    assert documented == set(FirestoreSettings.__struct_fields__)


def test_the_rule_example_is_a_valid_rule() -> None:
    block = DOC.split("### `brokers/{b}/rules/{rule_id}`")[1].split("```json")[1].split("```")[0]
    rule = parse_rule({"id": "example", **json.loads(block)})
    assert rule.action == "pump.on" and rule.rearm == 0.40


def test_the_thresholds_example_expands() -> None:
    raw = re.search(r"`thresholds` \| \*\*server\*\* \| `(\{.*?\})`", DOC)
    assert raw is not None
    rules = thresholds_to_rules("pot-1", json.loads(raw.group(1)), ["pump", "lamp", "fan"])
    assert {r.reading for r in rules} == {"soil_moisture", "temperature", "light"}
