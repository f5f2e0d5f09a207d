"""Local time for rules: daily windows ("06:00-20:00", may cross midnight) and budget days.

Pure arithmetic on unix milliseconds; the caller passes `now_ms`. A time zone is
either a fixed offset ("UTC", "Z", "+02:00", "-0530") or an IANA name
("Europe/Paris", resolved with `zoneinfo`, so daylight saving time is honoured).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_MS = 86_400_000
MINUTE_MS = 60_000
_HHMM_RE = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")
_OFFSET_RE = re.compile(r"^(?:UTC)?([+-])(\d{2}):?(\d{2})$")


def parse_hhmm(text: str) -> int:
    """`"06:30"` -> 390 minutes after midnight; `"24:00"` is allowed as an end of day."""
    m = _HHMM_RE.match(text.strip())
    if m is None:
        raise ValueError(f"time {text!r} is not HH:MM (00:00-24:00)")
    minutes = int(m.group(1)) * 60 + int(m.group(2))
    if minutes > 1440:
        raise ValueError(f"time {text!r} is after 24:00")
    return minutes


def _fmt(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily window [start, end) in local minutes; start > end crosses midnight (22:00-06:00)."""

    start_min: int
    end_min: int

    def __post_init__(self) -> None:
        if not (0 <= self.start_min < 1440 and 0 <= self.end_min <= 1440):
            raise ValueError(f"window {self} is outside 00:00-24:00")
        if self.start_min == self.end_min % 1440:
            raise ValueError(
                f"window {self} is empty or the whole day; omit the window to act at any time"
            )

    @classmethod
    def parse(cls, text: str) -> TimeWindow:
        """`"06:00-20:00"` or `"22:00-06:00"` (crosses midnight)."""
        start, sep, end = text.partition("-")
        if not sep:
            raise ValueError(f"window {text!r} is not HH:MM-HH:MM, e.g. 06:00-20:00")
        start_min = parse_hhmm(start)
        if start_min == 1440:
            raise ValueError(f"window {text!r} cannot start at 24:00; use 00:00")
        return cls(start_min, parse_hhmm(end))

    def contains(self, minute_of_day: int) -> bool:
        """True when the local minute is inside the window (start included, end excluded)."""
        if self.start_min < self.end_min:
            return self.start_min <= minute_of_day < self.end_min
        return minute_of_day >= self.start_min or minute_of_day < self.end_min

    def __str__(self) -> str:
        return f"{_fmt(self.start_min)}-{_fmt(self.end_min)}"


class LocalClock:
    """Turns unix ms into (local day number, local minute of day) for one time zone.

    Fixed offsets are pure arithmetic. For a named zone the UTC offset is looked up
    once per UTC minute and reused, since zone transitions fall on whole minutes.
    """

    __slots__ = ("_cached_minute", "_cached_offset_ms", "_fixed_offset_ms", "_zone", "name")

    def __init__(self, tz: str) -> None:
        self.name = tz
        self._zone: ZoneInfo | None = None
        self._fixed_offset_ms = 0
        self._cached_minute = -1
        self._cached_offset_ms = 0
        text = tz.strip()
        if text in ("UTC", "Z", "utc"):
            return
        m = _OFFSET_RE.match(text)
        if m is not None:
            hours, minutes = int(m.group(2)), int(m.group(3))
            if hours > 14 or minutes >= 60:
                raise ValueError(f"time zone offset {tz!r} is out of range (-14:00..+14:00)")
            sign = -1 if m.group(1) == "-" else 1
            self._fixed_offset_ms = sign * (hours * 60 + minutes) * MINUTE_MS
            return
        try:
            self._zone = ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"time zone {tz!r} is neither an offset like +02:00 nor a known zone name "
                "like Europe/Paris"
            ) from exc

    def offset_ms(self, now_ms: int) -> int:
        """The zone's UTC offset at `now_ms`, in ms."""
        if self._zone is None:
            return self._fixed_offset_ms
        minute = now_ms // MINUTE_MS
        if minute != self._cached_minute:
            at = datetime.fromtimestamp(minute * 60, UTC).astimezone(self._zone)
            delta = at.utcoffset() or timedelta(0)
            self._cached_offset_ms = int(delta.total_seconds() * 1000)
            self._cached_minute = minute
        return self._cached_offset_ms

    def local(self, now_ms: int) -> tuple[int, int]:
        """(local day number since 1970-01-01, local minute of day 0..1439)."""
        local_ms = now_ms + self.offset_ms(now_ms)
        return local_ms // DAY_MS, (local_ms % DAY_MS) // MINUTE_MS
