"""`HistoryStore` in memory: the fast fake beside `sql_history`, with the same watermark,
merge and retention rules (nothing deleted before it is rolled up; each device keeps its
newest presence transition)."""

from __future__ import annotations

from dataclasses import dataclass, field

from planty_broker.domain.history import HistoryUsage, HourlyRollup, merge, roll_up
from planty_broker.domain.models import DeviceRecord, PresenceTransition, Reading


@dataclass(slots=True)
class _HistoryState:
    rollups: dict[tuple[str, int, str], HourlyRollup] = field(default_factory=dict)
    rolled_through: int = 0


class MemoryHistoryMixin:
    """Needs `_check()`, `_devices`, `_readings` and `_presence` from `MemoryStore`."""

    _devices: dict[str, DeviceRecord]
    _readings: dict[str, list[tuple[int, int, Reading]]]
    _reading_keys: dict[str, set[tuple[int, int]]]
    _presence: dict[str, list[tuple[int, int, PresenceTransition]]]
    __history: _HistoryState | None = None

    def _check(self) -> None:
        raise NotImplementedError  # provided by MemoryStore

    @property
    def _h(self) -> _HistoryState:
        if self.__history is None:
            self.__history = _HistoryState()
        return self.__history

    def _forget_device_history(self, device_id: str) -> None:
        h = self._h
        for key in [k for k in h.rollups if k[0] == device_id]:
            del h.rollups[key]

    def _by_arrival(self) -> list[tuple[int, Reading]]:
        return sorted((i, r) for rows in self._readings.values() for _, i, r in rows)

    async def roll_up_readings(self, arrived_before_ms: int, limit: int) -> int:
        self._check()
        h = self._h
        taken: list[tuple[int, Reading]] = []
        for i, r in self._by_arrival():
            if i <= h.rolled_through:
                continue
            if len(taken) >= limit or r.received_ms >= arrived_before_ms:
                break
            taken.append((i, r))
        if not taken:
            return 0
        for key, part in roll_up((r.device_id, r.ts_ms, r.values) for _, r in taken).items():
            prev = h.rollups.get(key)
            h.rollups[key] = part if prev is None else merge(prev, part)
        h.rolled_through = taken[-1][0]
        return len(taken)

    async def hourly_readings(
        self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[HourlyRollup]:
        self._check()
        if limit <= 0:
            return []
        found = [
            r
            for (d, hour, _), r in self._h.rollups.items()
            if d == device_id
            and (since_ms is None or hour >= since_ms)
            and (until_ms is None or hour <= until_ms)
        ]
        hours = sorted({r.hour_ms for r in found})[-limit:]
        first = hours[0] if hours else 0
        return sorted((r for r in found if r.hour_ms >= first), key=lambda r: r.key[1:])

    async def prune_readings(self, arrived_before_ms: int, limit: int) -> int:
        self._check()
        through = self._h.rolled_through
        gone = 0
        for device_id, rows in self._readings.items():
            kept = [
                x for x in rows if not (x[1] <= through and x[2].received_ms < arrived_before_ms)
            ]
            gone += len(rows) - len(kept)
            self._readings[device_id] = kept
            self._reading_keys[device_id] = {
                (x[2].boot, x[2].seq) for x in kept if x[2].boot is not None
            }
        return gone

    async def prune_rollups(self, hour_before_ms: int) -> int:
        self._check()
        h = self._h
        old = [k for k in h.rollups if k[1] < hour_before_ms]
        for key in old:
            del h.rollups[key]
        return len(old)

    async def prune_presence(self, before_ms: int, limit: int) -> int:
        self._check()
        gone = 0
        for device_id, rows in self._presence.items():
            if gone >= limit:
                break
            kept = [x for x in rows[:-1] if x[0] >= before_ms] + rows[-1:]
            gone += len(rows) - len(kept)
            self._presence[device_id] = kept
        return gone

    async def history_usage(self) -> HistoryUsage:
        self._check()
        return HistoryUsage(
            readings=sum(len(rows) for rows in self._readings.values()),
            rollups=len(self._h.rollups),
            presence=sum(len(rows) for rows in self._presence.values()),
            rolled_through_id=self._h.rolled_through,
        )
