"""`RuleStore` in memory: the fast fake beside `sql_rules`, same order and same events."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import msgspec

from planty_broker.domain.events import NewEvent
from planty_broker.domain.rules.records import (
    RULE_EVENT_TYPE,
    HistoryOutcome,
    RuleEvent,
    StoredRule,
)


def _json(value: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(value))


class MemoryRulesMixin:
    """Needs `_check()` and `_log_events()` from `MemoryStore` / `MemoryQueueMixin`."""

    __rules: dict[str, StoredRule] | None = None
    __history: list[RuleEvent] | None = None
    __last_id = 0

    def _check(self) -> None:
        raise NotImplementedError  # provided by MemoryStore

    def _log_events(self, new: Sequence[NewEvent]) -> None:
        raise NotImplementedError  # provided by MemoryQueueMixin

    @property
    def _rule_rows(self) -> dict[str, StoredRule]:
        if self.__rules is None:
            self.__rules = {}
        return self.__rules

    @property
    def _rule_lines(self) -> list[RuleEvent]:
        if self.__history is None:
            self.__history = []
        return self.__history

    async def list_rules(self) -> list[StoredRule]:
        self._check()
        return [
            dataclasses.replace(r, data=_json(r.data)) for _, r in sorted(self._rule_rows.items())
        ]

    async def save_rules(self, put: Sequence[StoredRule], delete: Sequence[str] = ()) -> None:
        self._check()
        rows = self._rule_rows
        for rule_id in delete:
            rows.pop(rule_id, None)
        for r in put:
            old = rows.get(r.id)
            created = old.created_ms if old is not None else r.created_ms
            rows[r.id] = dataclasses.replace(r, data=_json(r.data), created_ms=created)

    async def append_rule_history(self, events: Sequence[RuleEvent]) -> None:
        self._check()
        self._append_lines(events)

    def _append_lines(self, events: Sequence[RuleEvent]) -> None:
        lines = self._rule_lines
        for e in events:
            self.__last_id += 1
            lines.append(dataclasses.replace(e, data=_json(e.data), id=self.__last_id))
        self._log_events([NewEvent(e.at_ms, RULE_EVENT_TYPE, e.device_id, e.data) for e in events])

    async def rule_history(
        self,
        rule_id: str,
        *,
        device_id: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[RuleEvent]:
        self._check()
        out: list[RuleEvent] = []
        for e in reversed(self._rule_lines):
            if len(out) >= limit:
                break
            if (
                e.rule_id == rule_id
                and (device_id is None or e.device_id == device_id)
                and (since_ms is None or e.at_ms >= since_ms)
                and (until_ms is None or e.at_ms <= until_ms)
                and (before_id is None or e.id < before_id)
            ):
                out.append(dataclasses.replace(e, data=_json(e.data)))
        return out

    async def rule_fires_since(self, since_ms: int) -> list[RuleEvent]:
        self._check()
        fire = HistoryOutcome.FIRE.value
        found = [e for e in self._rule_lines if e.outcome == fire and e.at_ms >= since_ms]
        return sorted(found, key=lambda e: (e.at_ms, e.id))

    async def prune_rule_history(self, before_ms: int, limit: int) -> int:
        self._check()
        lines = self._rule_lines
        old = [i for i, e in enumerate(lines) if e.at_ms < before_ms][:limit]
        for i in reversed(old):
            del lines[i]
        return len(old)
