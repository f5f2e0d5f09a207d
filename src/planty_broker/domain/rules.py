"""Threshold rules that run in the broker (issue 5): one import for the whole pure engine.

- `rules_model`: `Rule` (validated on construction, `RuleError.reasons`), `parse_rule`,
  `rule_to_dict`, `problems_for_device` / `problems_for_record` (the API's 422 reasons).
- `rules_time`: `TimeWindow` ("06:00-20:00", may cross midnight) and `LocalClock`.
- `rules_eval`: `RuleState`, `Decision`, `evaluate`, `note_manual_command`,
  `record_fire`, `check_silence` / `silent_sensors`, `quiet_band`.
- `rules_index`: `RuleIndex`, device -> reading -> [(rule, state)] for the hot path.
- `rules_thresholds`: `thresholds_to_rules`, the expansion behind `set_thresholds`.

No I/O, no asyncio: time comes in as `now_ms`. Semantics are in docs/rules.md.
"""

from __future__ import annotations

from planty_broker.domain.rules_eval import (
    Decision,
    Outcome,
    Reason,
    RuleState,
    check_silence,
    evaluate,
    human_ms,
    note_manual_command,
    quiet_band,
    record_fire,
    silent_sensors,
)
from planty_broker.domain.rules_index import ActuatorsOf, Entry, RuleIndex
from planty_broker.domain.rules_model import (
    ALL_DEVICES,
    DEFAULT_HOLD_S,
    DEFAULT_STALE_AFTER_S,
    Op,
    Rule,
    RuleError,
    parse_rule,
    problems_for_device,
    problems_for_record,
    rule_to_dict,
)
from planty_broker.domain.rules_thresholds import (
    ALIASES,
    SHORTCUTS,
    THRESHOLD_ID_PREFIX,
    Shortcut,
    rules_to_thresholds,
    threshold_rule_prefix,
    thresholds_to_rules,
)
from planty_broker.domain.rules_time import LocalClock, TimeWindow

__all__ = [
    "ALIASES",
    "ALL_DEVICES",
    "DEFAULT_HOLD_S",
    "DEFAULT_STALE_AFTER_S",
    "SHORTCUTS",
    "THRESHOLD_ID_PREFIX",
    "ActuatorsOf",
    "Decision",
    "Entry",
    "LocalClock",
    "Op",
    "Outcome",
    "Reason",
    "Rule",
    "RuleError",
    "RuleIndex",
    "RuleState",
    "Shortcut",
    "TimeWindow",
    "check_silence",
    "evaluate",
    "human_ms",
    "note_manual_command",
    "parse_rule",
    "problems_for_device",
    "problems_for_record",
    "quiet_band",
    "record_fire",
    "rule_to_dict",
    "rules_to_thresholds",
    "silent_sensors",
    "threshold_rule_prefix",
    "thresholds_to_rules",
]
