"""Availability from stored presence transitions: exact time in each state over a window.

Not sampled: the time between two transitions is attributed to the state the
first one entered, to the millisecond. `unknown` time (the broker itself was
down, or nothing is known yet) is counted apart and left out of the
denominator of the share, so a gateway restart neither fakes an outage nor a
recovery.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter

from planty_broker.domain.models import PresenceState, PresenceTransition


@dataclass(frozen=True, slots=True)
class PresenceSpan:
    """A stretch of time [start_ms, end_ms) spent in one state (for timelines)."""

    state: PresenceState
    start_ms: int
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


@dataclass(frozen=True, slots=True)
class Availability:
    """Time in each presence state over [start_ms, end_ms); the four add up to the window."""

    start_ms: int
    end_ms: int
    online_ms: int = 0
    late_ms: int = 0
    offline_ms: int = 0
    unknown_ms: int = 0

    @property
    def known_ms(self) -> int:
        """Time the broker knew the state: the denominator of the shares."""
        return self.online_ms + self.late_ms + self.offline_ms

    @property
    def share(self) -> float | None:
        """Share of known time spent online (unknown time excluded); None if nothing is known."""
        known = self.known_ms
        return self.online_ms / known if known else None

    @property
    def share_not_offline(self) -> float | None:
        """Share of known time online or late (late: one expected message missed, not gone)."""
        known = self.known_ms
        return (self.online_ms + self.late_ms) / known if known else None

    def as_dict(self) -> dict[str, int | float | None]:
        """Plain values for the API."""
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "share": self.share,
            "share_not_offline": self.share_not_offline,
            "online_ms": self.online_ms,
            "late_ms": self.late_ms,
            "offline_ms": self.offline_ms,
            "unknown_ms": self.unknown_ms,
        }

    @staticmethod
    def total(parts: Iterable[Availability], start_ms: int, end_ms: int) -> Availability:
        """Fleet figure: the times of many devices added up (share = fleet online time / known)."""
        online = late = offline = unknown = 0
        for part in parts:
            online += part.online_ms
            late += part.late_ms
            offline += part.offline_ms
            unknown += part.unknown_ms
        return Availability(start_ms, end_ms, online, late, offline, unknown)


def presence_spans(
    transitions: Iterable[PresenceTransition],
    window_start_ms: int,
    window_end_ms: int,
    *,
    state_before: PresenceState | None = None,
) -> list[PresenceSpan]:
    """The window [start, end) cut into spans of one state each, oldest first.

    `transitions` are one device's, in any order, duplicates allowed (equal times
    keep their given order: the last one wins). They may start before the
    window: the last one at or before `window_start_ms` gives the state at the
    start. `state_before` is the state in force before the earliest given
    transition (e.g. the newest stored one before the window); None means not
    known, so the time until the first transition counts as unknown.
    """
    if window_end_ms < window_start_ms:
        raise ValueError("the window ends before it starts")
    ordered = sorted(transitions, key=attrgetter("at_ms"))
    if len({t.device_id for t in ordered}) > 1:
        raise ValueError("presence transitions of several devices were mixed")
    state = state_before if state_before is not None else PresenceState.UNKNOWN
    spans: list[PresenceSpan] = []
    cursor = window_start_ms
    for transition in ordered:
        if transition.at_ms >= window_end_ms:
            break
        if transition.at_ms > cursor:
            _append(spans, state, cursor, transition.at_ms)
            cursor = transition.at_ms
        state = transition.state
    _append(spans, state, cursor, window_end_ms)
    return spans


def _append(spans: list[PresenceSpan], state: PresenceState, start_ms: int, end_ms: int) -> None:
    if end_ms <= start_ms:
        return
    if spans and spans[-1].state == state and spans[-1].end_ms == start_ms:
        spans[-1] = PresenceSpan(state, spans[-1].start_ms, end_ms)
    else:
        spans.append(PresenceSpan(state, start_ms, end_ms))


def availability(
    transitions: Iterable[PresenceTransition],
    window_start_ms: int,
    window_end_ms: int,
    *,
    state_before: PresenceState | None = None,
) -> Availability:
    """Exact time online, late, offline and unknown over [start, end) and the online share.

    Unknown time (the broker was down, or no state known yet) is reported in
    `unknown_ms` and excluded from the denominator of `share`:
    share = online / (online + late + offline), None when that is 0.
    See `presence_spans` for how transitions and `state_before` are read.
    """
    totals = dict.fromkeys(PresenceState, 0)
    for span in presence_spans(
        transitions, window_start_ms, window_end_ms, state_before=state_before
    ):
        totals[span.state] += span.duration_ms
    return Availability(
        window_start_ms,
        window_end_ms,
        online_ms=totals[PresenceState.ONLINE],
        late_ms=totals[PresenceState.LATE],
        offline_ms=totals[PresenceState.OFFLINE],
        unknown_ms=totals[PresenceState.UNKNOWN] + totals[PresenceState.NEVER_SEEN],
    )
