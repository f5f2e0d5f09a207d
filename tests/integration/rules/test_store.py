"""The rule store contract on MemoryStore, SQLite and PostgreSQL: same answers everywhere."""

from __future__ import annotations

from typing import Any

import pytest

from planty_broker.domain.rules.records import RuleEvent, StoredRule

pytestmark = pytest.mark.asyncio(loop_scope="session")


def line(rule_id: str, at: int, outcome: str = "fire", device: str | None = "dev-1") -> RuleEvent:
    data = {"rule_id": rule_id, "device_id": device, "outcome": outcome, "at_ms": at, "value": 0.2}
    return RuleEvent(rule_id, device, at, outcome, data)


async def test_rules_are_saved_replaced_and_deleted_in_one_go(store: Any) -> None:
    await store.save_rules([StoredRule("b", {"x": 1}, "api", 10, 10)])
    await store.save_rules(
        [
            StoredRule("a", {"x": [1, 2]}, "firestore", 20, 20),
            StoredRule("b", {"x": 2}, "cli", 30, 30),
        ]
    )
    rows = await store.list_rules()
    assert rows == [
        StoredRule("a", {"x": [1, 2]}, "firestore", 20, 20),
        StoredRule("b", {"x": 2}, "cli", 10, 30),  # a replace keeps created_ms
    ]
    await store.save_rules([], delete=["a", "missing"])
    assert [r.id for r in await store.list_rules()] == ["b"]


async def test_history_lines_are_kept_in_order_with_their_rule_events(store: Any) -> None:
    st = store
    lines = [line("r1", 100), line("r2", 110), line("r1", 120, "suppressed"), line("r1", 90)]
    lines.append(line("r1", 130, "changed", device=None))
    await st.append_rule_history(lines)
    got = await st.rule_history("r1")
    assert [(e.at_ms, e.outcome) for e in got] == [
        (130, "changed"),
        (90, "fire"),
        (120, "suppressed"),
        (100, "fire"),
    ]  # newest written first
    assert got[1].data == {
        "rule_id": "r1",
        "device_id": "dev-1",
        "outcome": "fire",
        "at_ms": 90,
        "value": 0.2,
    }
    page = await st.rule_history("r1", before_id=got[1].id, limit=1)
    assert [e.at_ms for e in page] == [120]
    timed = await st.rule_history("r1", since_ms=95, until_ms=125)
    assert [e.at_ms for e in timed] == [120, 100]
    assert await st.rule_history("r1", device_id="dev-2") == []
    fires = await st.rule_fires_since(95)
    assert [(e.rule_id, e.at_ms) for e in fires] == [("r1", 100), ("r2", 110)]
    events = await st.read_events(0, 100, ["rule"])
    assert [(e.device_id, e.data["at_ms"]) for e in events] == [
        ("dev-1", 100),
        ("dev-1", 110),
        ("dev-1", 120),
        ("dev-1", 90),
        (None, 130),
    ]


async def test_old_history_is_pruned_in_chunks(store: Any) -> None:
    st = store
    await st.append_rule_history([line("r", t) for t in range(10)])
    assert await st.prune_rule_history(7, 4) == 4
    assert await st.prune_rule_history(7, 4) == 3
    assert await st.prune_rule_history(7, 4) == 0
    left = await st.rule_history("r")
    assert [e.at_ms for e in left] == [9, 8, 7]
