"""What the rules service hands out and writes about itself: `RuleInfo` (a live rule and who
set it), the `changed` history line of a rule change, and the broker's time zone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planty_broker.domain.rules.model import Rule, rule_to_dict
from planty_broker.domain.rules.records import HistoryOutcome, RuleEvent


def machine_timezone() -> str:
    """This machine's zone: the IANA name behind /etc/localtime, else its UTC offset now."""
    try:
        target = str(Path("/etc/localtime").resolve())
    except OSError:
        target = ""
    marker = "/zoneinfo/"
    if marker in target:
        name = target.split(marker, 1)[1]
        if name and not name.startswith(("posix/", "right/")):
            return name
    offset_s = time.localtime().tm_gmtoff
    if not offset_s:
        return "UTC"
    sign = "-" if offset_s < 0 else "+"
    minutes = abs(offset_s) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """A live rule and its bookkeeping (who put it there, when)."""

    rule: Rule
    origin: str
    created_ms: int
    updated_ms: int

    def to_dict(self) -> dict[str, Any]:
        out = rule_to_dict(self.rule)
        out.update(origin=self.origin, created_ms=self.created_ms, updated_ms=self.updated_ms)
        return out


def changed_line(rule: Rule, change: str, origin: str, at: int) -> RuleEvent:
    """The history line of a rule change (`reason`: created, updated, deleted; `origin`)."""
    detail = f"rule {change} by {origin}: {rule.describe()}"
    if not rule.enabled and change != "deleted":
        detail += " (disabled)"
    data = {
        "rule_id": rule.id,
        "device_id": None,
        "outcome": HistoryOutcome.CHANGED.value,
        "reason": change,
        "at_ms": at,
        "origin": origin,
        "rule": None if change == "deleted" else rule_to_dict(rule),
        "detail": detail,
    }
    return RuleEvent(rule.id, None, at, HistoryOutcome.CHANGED.value, data)
