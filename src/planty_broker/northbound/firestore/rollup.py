"""History roll-ups: readings folded into one document per device and hour (or day). Pure.

Each bucket document holds, per reading name, count/min/max/sum/avg/last, and
`event_id`, the newest event folded in. The documents are written with absolute
values (never increments), and a bucket seeded from its stored document skips
events it already holds, so a retried batch or a replay after a crash counts
every reading exactly once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from planty_broker.northbound.firestore.model import at, bucket_bounds


@dataclass(slots=True)
class Agg:
    """One reading's figures in one bucket."""

    count: int = 0
    min: float = 0.0
    max: float = 0.0
    sum: float = 0.0
    last: float = 0.0
    last_ms: int = 0

    def add(self, value: float, ts_ms: int) -> None:
        if self.count == 0:
            self.min = self.max = value
        else:
            self.min = min(self.min, value)
            self.max = max(self.max, value)
        self.count += 1
        self.sum += value
        if ts_ms >= self.last_ms:
            self.last, self.last_ms = value, ts_ms

    def to_doc(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "sum": self.sum,
            "avg": self.sum / self.count if self.count else None,
            "last": self.last,
            "last_at": at(self.last_ms),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Agg:
        last_at = doc.get("last_at")
        last_ms = int(last_at.timestamp() * 1000) if isinstance(last_at, dt.datetime) else 0
        return cls(
            count=int(doc.get("count") or 0),
            min=float(doc.get("min") or 0.0),
            max=float(doc.get("max") or 0.0),
            sum=float(doc.get("sum") or 0.0),
            last=float(doc.get("last") or 0.0),
            last_ms=last_ms,
        )


@dataclass(slots=True)
class Bucket:
    """A device's readings in one hour or day."""

    device_id: str
    bucket_id: str
    start_ms: int
    end_ms: int
    event_id: int = 0  # newest event folded in
    messages: int = 0
    readings: dict[str, Agg] = field(default_factory=dict)

    def fold(self, event_id: int, ts_ms: int, values: Mapping[str, float]) -> bool:
        """Add one telemetry message; False if it was already in (a replay)."""
        if event_id <= self.event_id:
            return False
        self.event_id = event_id
        self.messages += 1
        for name, value in values.items():
            agg = self.readings.get(name)
            if agg is None:
                agg = self.readings[name] = Agg()
            agg.add(float(value), ts_ms)
        return True

    def to_doc(self, keep_days: float) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "bucket": self.bucket_id,
            "start": at(self.start_ms),
            "end": at(self.end_ms),
            "messages": self.messages,
            "readings": {name: agg.to_doc() for name, agg in self.readings.items()},
            "event_id": self.event_id,
            "expire_at": at(self.end_ms + keep_days * 86_400_000),
        }

    def seed(self, doc: Mapping[str, Any] | None) -> None:
        """Start from what Firestore already holds for this bucket."""
        if not doc:
            return
        self.event_id = int(doc.get("event_id") or 0)
        self.messages = int(doc.get("messages") or 0)
        raw = doc.get("readings")
        if isinstance(raw, Mapping):
            self.readings = {
                str(k): Agg.from_doc(v) for k, v in raw.items() if isinstance(v, Mapping)
            }


SIZE_MS = {"hour": 3_600_000, "day": 86_400_000}  # UTC hours and days align with the epoch


class Rollups:
    """The buckets in memory by (device, bucket number); old ones are evicted once written."""

    def __init__(self, size: str) -> None:
        self.size = size
        self._size_ms = SIZE_MS[size]
        self._buckets: dict[tuple[str, int], Bucket] = {}

    def key(self, device_id: str, ts_ms: int) -> tuple[str, int]:
        return device_id, ts_ms // self._size_ms

    def get(self, device_id: str, ts_ms: int) -> Bucket | None:
        return self._buckets.get((device_id, ts_ms // self._size_ms))

    def add(self, device_id: str, ts_ms: int, seed: Mapping[str, Any] | None) -> Bucket:
        bucket_id, start, end = bucket_bounds(ts_ms, self.size)
        b = Bucket(device_id, bucket_id, start, end)
        b.seed(seed)
        self._buckets[(device_id, ts_ms // self._size_ms)] = b
        return b

    def bucket_id(self, ts_ms: int) -> str:
        return bucket_bounds(ts_ms, self.size)[0]

    def forget_device(self, device_id: str) -> None:
        for key in [k for k in self._buckets if k[0] == device_id]:
            del self._buckets[key]

    def evict_before(self, ms: int, busy: Callable[[Bucket], bool]) -> int:
        """Drop buckets that ended before `ms`, except those `busy` says are not written yet."""
        old = [k for k, b in self._buckets.items() if b.end_ms < ms and not busy(b)]
        for k in old:
            del self._buckets[k]
        return len(old)

    def __len__(self) -> int:
        return len(self._buckets)
