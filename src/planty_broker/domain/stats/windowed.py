"""Latency over sliding windows ("last hour", "last day", "last week") in bounded memory.

A `WindowedSketch` keeps, for each level of its `WindowLayout`, a ring of time
slots aligned on the unix epoch (so two devices' slots line up and merge). By
default: 12 slots of 5 minutes, 24 of 1 hour, 7 of 1 day. Each value is
counted in the current slot of every level (one bucket key, three counter
increments). A finished slot is frozen to `bytes` (see `LatencySketch.to_bytes`);
empty slots cost nothing. A window is answered from the finest level that spans
it, as whole slots: the current (partial) slot and the ceil(W / slot) - 1 before
it, so "the last hour" covers between 55 and 60 minutes by default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from planty_broker.domain.stats.sketch import (
    DEFAULT_MAPPING,
    KeyMapping,
    LatencySketch,
    count_of_bytes,
    key_of,
)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS


@dataclass(frozen=True, slots=True)
class WindowLayout:
    """Levels of (slot_ms, slots), finest first; each spans slot_ms x slots of history."""

    levels: tuple[tuple[int, int], ...] = ((5 * MINUTE_MS, 12), (HOUR_MS, 24), (DAY_MS, 7))
    mapping: KeyMapping = DEFAULT_MAPPING

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("a window layout needs at least one level")
        spans = [slot_ms * n for slot_ms, n in self.levels]
        if any(slot_ms <= 0 or n < 1 for slot_ms, n in self.levels):
            raise ValueError("slot_ms and slots must be positive")
        if spans != sorted(spans):
            raise ValueError("levels must be ordered finest first, each spanning more")

    @property
    def max_window_ms(self) -> int:
        slot_ms, n = self.levels[-1]
        return slot_ms * n

    def level_for(self, window_ms: int) -> int:
        """Index of the finest level that spans `window_ms`; ValueError if none does."""
        if window_ms <= 0:
            raise ValueError("window must be positive")
        for index, (slot_ms, n) in enumerate(self.levels):
            if window_ms <= slot_ms * n:
                return index
        raise ValueError(
            f"window of {window_ms} ms is longer than the {self.max_window_ms} ms of kept history"
        )


DEFAULT_LAYOUT = WindowLayout()


class _Level:
    """One ring: the current slot and frozen earlier ones (sealed[i] is period - 1 - i)."""

    __slots__ = ("current", "period", "sealed", "slot_ms", "slots")

    def __init__(self, slot_ms: int, slots: int, now_ms: int) -> None:
        self.slot_ms = slot_ms
        self.slots = slots
        self.period = now_ms // slot_ms
        self.current: LatencySketch | None = None
        self.sealed: list[bytes | None] = []

    def advance(self, period: int) -> None:
        """Freeze the current slot and move to `period` (gaps become empty slots)."""
        slots = self.slots
        gap = period - self.period
        frozen = self.current.to_bytes() if self.current is not None else None
        fresh: list[bytes | None] = [None] * min(gap - 1, slots)  # newest first: the gap
        fresh.append(frozen)
        sealed = (fresh + self.sealed)[: slots - 1]
        while sealed and sealed[-1] is None:
            sealed.pop()
        self.sealed = sealed
        self.period = period
        self.current = None

    def slot(self, period: int) -> LatencySketch | bytes | None:
        if period == self.period:
            return self.current
        i = self.period - 1 - period
        return self.sealed[i] if 0 <= i < len(self.sealed) else None

    def in_window(self, first: int) -> Iterable[LatencySketch | bytes]:
        """Non-empty slots from period `first` on."""
        if self.current is not None and self.period >= first:
            yield self.current
        for i, blob in enumerate(self.sealed):
            if self.period - 1 - i < first:
                break
            if blob is not None:
                yield blob


class WindowedSketch:
    """A device's (or the fleet's) latency sketch over sliding windows; times in unix ms."""

    __slots__ = ("_layout", "_levels", "mapping", "total_count", "total_ms")

    def __init__(self, layout: WindowLayout = DEFAULT_LAYOUT) -> None:
        self._layout = layout
        self.mapping = layout.mapping  # read-only: for `key_of` before `add_keyed`
        self._levels: list[_Level] | None = None  # created at the first value
        self.total_count = 0  # every value ever added (since this process started)
        self.total_ms = 0.0  # and their sum: a Prometheus summary's _count and _sum

    @property
    def layout(self) -> WindowLayout:
        return self._layout

    def add(self, value_ms: float, now_ms: int) -> None:
        """Count one latency observed at `now_ms` (negative counts as 0; NaN/inf refused)."""
        if value_ms < 0.0:  # noqa: PLR1730 (an if is ~100 ns cheaper than max() per sample)
            value_ms = 0.0
        self.add_keyed(key_of(self.mapping, value_ms), value_ms, now_ms)

    def add_keyed(self, key: int | None, value_ms: float, now_ms: int) -> None:
        """`add` with the bucket key already computed by `key_of` (to feed two sketches)."""
        self.total_count += 1
        self.total_ms += value_ms
        levels = self._levels
        if levels is None:
            levels = self._levels = [
                _Level(slot_ms, slots, now_ms) for slot_ms, slots in self._layout.levels
            ]
        for level in levels:
            period = now_ms // level.slot_ms
            if period > level.period:
                level.advance(period)
            # A clock that steps back counts into the current slot: history is never rewritten.
            current = level.current
            if current is None:
                current = level.current = LatencySketch(self.mapping)
            current.add_keyed(key, value_ms)

    def window(self, window_ms: int, now_ms: int) -> LatencySketch:
        """A merged sketch of the values of the last `window_ms` (whole slots), at `now_ms`."""
        merged = LatencySketch(self._layout.mapping)
        for part in self._parts(window_ms, now_ms):
            _merge_part(merged, part)
        return merged

    def quantiles(
        self, qs: Iterable[float], window_ms: int, now_ms: int
    ) -> tuple[float | None, ...]:
        """Quantiles (each None when the window has no value) of the last `window_ms`."""
        return self.window(window_ms, now_ms).quantiles(qs)

    def count(self, window_ms: int, now_ms: int) -> int:
        """How many values the last `window_ms` holds (cheap: reads slot headers only)."""
        total = 0
        for part in self._parts(window_ms, now_ms):
            total += count_of_bytes(part) if isinstance(part, bytes) else part.count
        return total

    def _parts(self, window_ms: int, now_ms: int) -> Iterable[LatencySketch | bytes]:
        index = self._layout.level_for(window_ms)
        if self._levels is None:
            return ()
        level = self._levels[index]
        newest = max(now_ms // level.slot_ms, level.period)
        first = newest - math.ceil(window_ms / level.slot_ms) + 1
        return level.in_window(first)

    def slots(self, window_ms: int, now_ms: int) -> list[tuple[int, int, LatencySketch]]:
        """(start ms, slot length ms, sketch) of every non-empty time slot of the window,
        oldest first, at the level that serves it (5 min slots for 1 h, 1 h for 1 d, ...).
        The sketches are copies or views: callers only read them."""
        if self._levels is None:
            return []
        level = self._levels[self._layout.level_for(window_ms)]
        newest = max(now_ms // level.slot_ms, level.period)
        first = newest - math.ceil(window_ms / level.slot_ms) + 1
        out: list[tuple[int, int, LatencySketch]] = []
        for period in range(first, newest + 1):
            part = level.slot(period)
            if part is None:
                continue
            slot = LatencySketch.from_bytes(part, self.mapping) if isinstance(part, bytes) else part
            if slot.count:
                out.append((period * level.slot_ms, level.slot_ms, slot))
        return out

    def merge(self, other: WindowedSketch) -> None:
        """Add every value of `other` (same layout) slot by slot, as if added here."""
        if other._layout != self._layout:
            raise ValueError("cannot merge windowed sketches with different layouts")
        self.total_count += other.total_count
        self.total_ms += other.total_ms
        if other._levels is None:
            return
        if self._levels is None:
            self._levels = [
                _Level(lv.slot_ms, lv.slots, lv.period * lv.slot_ms) for lv in other._levels
            ]
        for mine, theirs in zip(self._levels, other._levels, strict=True):
            if theirs.period > mine.period:
                mine.advance(theirs.period)
            for period in range(mine.period - mine.slots + 1, mine.period + 1):
                part = theirs.slot(period)
                if part is not None:
                    _merge_into(mine, period, part, self._layout.mapping)

    def is_empty(self) -> bool:
        return self._levels is None

    def __repr__(self) -> str:
        return f"WindowedSketch(levels={self._layout.levels}, empty={self._levels is None})"


def _merge_into(
    level: _Level, period: int, part: LatencySketch | bytes, mapping: KeyMapping
) -> None:
    """Merge a slot of another sketch into this level's slot for the same period."""
    if period == level.period:
        if level.current is None:
            level.current = LatencySketch(mapping)
        _merge_part(level.current, part)
        return
    i = level.period - 1 - period  # 0 <= i < slots - 1: the caller walks the kept periods
    target = LatencySketch(mapping)
    existing = level.sealed[i] if i < len(level.sealed) else None
    if existing is not None:
        target.merge_bytes(existing)
    _merge_part(target, part)
    level.sealed.extend([None] * (i + 1 - len(level.sealed)))
    level.sealed[i] = target.to_bytes()


def _merge_part(target: LatencySketch, part: LatencySketch | bytes) -> None:
    if isinstance(part, bytes):
        target.merge_bytes(part)
    else:
        target.merge(part)
