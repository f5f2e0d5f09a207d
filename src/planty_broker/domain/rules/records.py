"""Rules as stored and the lines of their history: the values the rule store reads and writes.

`StoredRule.data` is the rule's JSON object (`rule_to_dict`), so the store never
depends on the rule model's Python shape. `RuleEvent.data` is the history line
(`Decision.to_event()` plus what the service adds, e.g. the command id); it is
also the `data` of the event log's `rule` events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

RULE_EVENT_TYPE = "rule"  # the event log's type for rule history lines
ORIGIN_RULE = "rule"  # `CommandRecord.origin` of the commands rules send


class HistoryOutcome(StrEnum):
    """What a history line records (the first three come from the evaluator)."""

    FIRE = "fire"  # the rule sent its action as command `command_id`
    SUPPRESSED = "suppressed"  # a would-be fire held back; `reason` says by what
    WARNING = "warning"  # e.g. `sensor_silent`
    HOLD = "hold"  # a manual command on the rule's actuator holds it for `hold_s`
    CHANGED = "changed"  # the rule was created, updated or deleted (`reason`, `origin`)
    ERROR = "error"  # a fire's command was refused by the outbox (`error` says why)


@dataclass(frozen=True, slots=True)
class StoredRule:
    """One rule row: its JSON, who put it there (api, firestore, thresholds, cli), when."""

    id: str
    data: dict[str, Any]
    origin: str
    created_ms: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class RuleEvent:
    """One line of a rule's history; `id` is given by the store (0 before it is stored)."""

    rule_id: str
    device_id: str | None
    at_ms: int
    outcome: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int = 0
