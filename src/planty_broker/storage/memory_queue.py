"""`CommandStore` and `EventStore` in memory: the fast fake beside `sql_commands`/`sql_events`.

Same ordering, same dropping of rows of removed devices, same retention accounting.
`MemoryStore` mixes this in and calls `_log_events` from its readings and presence
appends, so every stored row has its event there too.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from planty_broker.domain.commands import (
    ACTIVE_STATES,
    FINAL_STATES,
    CommandChange,
    CommandRecord,
    CommandTransition,
    SendLeases,
    event_data,
)
from planty_broker.domain.events import (
    Consumer,
    Event,
    KeepRule,
    LogBounds,
    NewEvent,
    PruneResult,
)
from planty_broker.domain.models import DeviceRecord


def _json(value: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(value))


@dataclass(slots=True)
class _QueueState:
    commands: dict[str, CommandRecord] = field(default_factory=dict)
    leases: dict[str, tuple[str, int]] = field(default_factory=dict)  # command id: owner, until
    history: dict[str, list[CommandTransition]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    last_event_id: int = 0
    pruned_through: int = 0
    deleted_unconfirmed: int = 0
    consumers: dict[str, Consumer] = field(default_factory=dict)


class MemoryQueueMixin:
    """Needs `_check()` and `_devices` from `MemoryStore`."""

    _devices: dict[str, DeviceRecord]
    __queue: _QueueState | None = None

    def _check(self) -> None:
        raise NotImplementedError  # provided by MemoryStore

    @property
    def _q(self) -> _QueueState:
        if self.__queue is None:
            self.__queue = _QueueState()
        return self.__queue

    # events -------------------------------------------------------------------

    def _log_events(self, new: Sequence[NewEvent]) -> None:
        q = self._q
        for e in new:
            q.last_event_id += 1
            q.events.append(Event(q.last_event_id, e.at_ms, e.type, e.device_id, _json(e.data)))

    def _forget_device_commands(self, device_id: str) -> None:
        q = self._q
        for cid in [c.id for c in q.commands.values() if c.device_id == device_id]:
            del q.commands[cid]
            q.history.pop(cid, None)
            q.leases.pop(cid, None)

    async def append_events(self, new: Sequence[NewEvent]) -> None:
        self._check()
        self._log_events(new)

    async def read_events(
        self, after: int, limit: int, types: Sequence[str] | None = None
    ) -> list[Event]:
        self._check()
        evs = self._q.events
        i = bisect.bisect_right(evs, after, key=lambda e: e.id)
        out: list[Event] = []
        for e in evs[i:]:
            if len(out) >= limit:
                break
            if not types or e.type in types:
                out.append(dataclasses.replace(e, data=_json(e.data)))
        return out

    async def event_bounds(self) -> LogBounds:
        self._check()
        q = self._q
        first = q.events[0].id if q.events else None
        return LogBounds(first, q.last_event_id, q.pruned_through, q.deleted_unconfirmed)

    async def set_consumer_cursor(self, name: str, acked: int, now_ms: int) -> Consumer:
        self._check()
        q = self._q
        old = q.consumers.get(name)
        c = (
            Consumer(name, acked, now_ms, now_ms)
            if old is None
            else dataclasses.replace(old, cursor=acked, updated_ms=now_ms)
        )
        q.consumers[name] = c
        return c

    async def get_consumer(self, name: str) -> Consumer | None:
        self._check()
        return self._q.consumers.get(name)

    async def list_consumers(self) -> list[Consumer]:
        self._check()
        return [c for _, c in sorted(self._q.consumers.items())]

    async def delete_consumer(self, name: str) -> bool:
        self._check()
        return self._q.consumers.pop(name, None) is not None

    async def prune_events(self, through_id: int, keep: KeepRule | None = None) -> PruneResult:
        self._check()
        q = self._q

        def spared(e: Event) -> bool:
            return keep is not None and e.type in keep.types and e.at_ms >= keep.after_ms

        gone = [e for e in q.events if e.id <= through_id and not spared(e)]
        q.events = [e for e in q.events if e.id > through_id or spared(e)]
        dropped: dict[str, int] = {}
        for name, c in q.consumers.items():
            n = sum(1 for e in gone if e.id > c.cursor)
            if n:
                dropped[name] = n
                q.consumers[name] = dataclasses.replace(c, dropped=c.dropped + n)
        lowest = min((c.cursor for c in q.consumers.values()), default=None)
        unconfirmed = 0 if lowest is None else sum(1 for e in gone if e.id > lowest)
        q.deleted_unconfirmed += unconfirmed
        q.pruned_through = max(q.pruned_through, through_id)
        return PruneResult(len(gone), through_id, dropped, unconfirmed)

    async def event_id_before(self, at_ms: int) -> int:
        self._check()
        return max((e.id for e in self._q.events if e.at_ms < at_ms), default=0)

    # commands -----------------------------------------------------------------

    async def apply_command_changes(self, changes: Sequence[CommandChange]) -> None:
        self._check()
        q = self._q
        for ch in changes:
            r = ch.record
            if r.device_id not in self._devices or (not ch.new and r.id not in q.commands):
                continue  # the device (and its commands) was removed meanwhile
            q.commands[r.id] = dataclasses.replace(
                r,
                args=_json(r.args),
                result=_json(r.result),
                late_ack=_json(r.late_ack),
            )
            q.history.setdefault(r.id, []).append(ch.transition)
            self._log_events(
                [NewEvent(ch.transition.at_ms, "command", r.device_id, event_data(ch))]
            )

    async def get_command(self, command_id: str) -> CommandRecord | None:
        self._check()
        return self._q.commands.get(command_id)

    async def list_commands(
        self, device_id: str | None, states: Sequence[str] | None, limit: int
    ) -> list[CommandRecord]:
        self._check()
        found = [
            c
            for c in self._q.commands.values()
            if (device_id is None or c.device_id == device_id)
            and (not states or c.state.value in states)
        ]
        found.sort(key=lambda c: (c.created_ms, c.id), reverse=True)
        return found[: max(limit, 0)]

    async def active_commands(self) -> list[CommandRecord]:
        self._check()
        found = [c for c in self._q.commands.values() if c.state in ACTIVE_STATES]
        return sorted(found, key=lambda c: (c.created_ms, c.id))

    async def command_history(self, command_id: str) -> list[CommandTransition]:
        self._check()
        return list(self._q.history.get(command_id, []))

    async def prune_commands(self, final_before_ms: int, limit: int) -> int:
        self._check()
        q = self._q
        old = [
            c.id
            for c in q.commands.values()
            if c.state in FINAL_STATES and c.updated_ms < final_before_ms
        ][:limit]
        for cid in old:
            del q.commands[cid]
            q.history.pop(cid, None)
            q.leases.pop(cid, None)
        return len(old)

    async def lease_commands(
        self, ids: Sequence[str], owner: str, now_ms: int, until_ms: int
    ) -> SendLeases:
        self._check()
        q = self._q
        granted: set[str] = set()
        held: dict[str, int] = {}
        for cid in ids:
            if cid not in q.commands:
                continue
            holder, until = q.leases.get(cid, (owner, 0))
            if holder == owner or until < now_ms:
                q.leases[cid] = (owner, until_ms)
                granted.add(cid)
            else:
                held[cid] = until
        return SendLeases(frozenset(granted), held)
