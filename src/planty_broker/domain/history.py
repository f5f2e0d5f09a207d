"""Long-term history: readings rolled up per device, sensor and hour (count, min, max, sum,
last), and the retention cut-offs that bound the store on disk. Pure values, no I/O.

Raw readings are kept `store.readings_keep_days`; before they go they have been folded
into hourly rollups, which are kept `store.rollups_keep_days` (years). A rollup is
keyed by the hour of the reading's own timestamp (`ts_ms`), so a reading that arrives
late (a device that buffered while offline) still lands in its hour: rollups merge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def hour_of(ts_ms: int) -> int:
    """The start (unix ms) of the UTC hour holding `ts_ms`."""
    return ts_ms - ts_ms % HOUR_MS


@dataclass(frozen=True, slots=True)
class HourlyRollup:
    """One sensor of one device over one hour: how many values, their range, sum and the
    newest one (`last`, taken at `last_ts_ms`)."""

    device_id: str
    sensor: str
    hour_ms: int
    count: int
    min: float
    max: float
    sum: float
    last: float
    last_ts_ms: int

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.device_id, self.hour_ms, self.sensor)


def merge(a: HourlyRollup, b: HourlyRollup) -> HourlyRollup:
    """Two rollups of the same key as one (order-free; ties on `last_ts_ms` keep `b`)."""
    newer = b if b.last_ts_ms >= a.last_ts_ms else a
    return HourlyRollup(
        a.device_id,
        a.sensor,
        a.hour_ms,
        a.count + b.count,
        min(a.min, b.min),
        max(a.max, b.max),
        a.sum + b.sum,
        newer.last,
        newer.last_ts_ms,
    )


def roll_up(
    readings: Iterable[tuple[str, int, Mapping[str, float]]],
) -> dict[tuple[str, int, str], HourlyRollup]:
    """Fold (device id, ts_ms, values) readings into hourly rollups by key."""
    out: dict[tuple[str, int, str], HourlyRollup] = {}
    for device_id, ts_ms, values in readings:
        hour = hour_of(ts_ms)
        for sensor, raw in values.items():
            if not isinstance(raw, int | float) or isinstance(raw, bool):
                continue  # the codec only stores numbers; older rows are not trusted blindly
            value = float(raw)
            key = (device_id, hour, sensor)
            one = HourlyRollup(device_id, sensor, hour, 1, value, value, value, value, ts_ms)
            prev = out.get(key)
            out[key] = one if prev is None else merge(prev, one)
    return out


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each kind of history is kept, in ms (from the settings)."""

    readings_ms: int
    rollups_ms: int
    presence_ms: int
    rollup_lag_ms: int = 60_000  # readings younger than this wait for the next pass

    def cutoffs(self, now_ms: int) -> Cutoffs:
        return Cutoffs(
            readings_before_ms=now_ms - self.readings_ms,
            rollups_before_ms=hour_of(now_ms - self.rollups_ms),
            presence_before_ms=now_ms - self.presence_ms,
            rollup_before_ms=now_ms - self.rollup_lag_ms,
        )


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """What one housekeeping pass at a given time may fold or delete."""

    readings_before_ms: int  # raw readings that arrived before this go (once rolled up)
    rollups_before_ms: int  # rollups of hours starting before this go
    presence_before_ms: int  # presence transitions before this go (each device keeps its last)
    rollup_before_ms: int  # readings that arrived before this are rolled up


@dataclass(frozen=True, slots=True)
class HistoryUsage:
    """Rows held per kind of history (for status, metrics and the bytes-per-device-day bench)."""

    readings: int
    rollups: int
    presence: int
    rolled_through_id: int
