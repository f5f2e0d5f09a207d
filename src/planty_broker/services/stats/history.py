"""A device's recent presence transitions, compact in memory, for exact availability.

The store holds every transition; this keeps the ones of the longest window
(a week by default) plus the state in force before them, so availability over
1 h / 1 d / 7 d and the presence timeline are answered without a query. It is
filled from the store at start (`load`) and from `PresenceChanged` as it
happens (`add`); both may overlap, duplicates are merged away. About 9 bytes
per kept transition, ~200 bytes for a device that did not change.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable

from planty_broker.domain.models import PresenceCause, PresenceState, PresenceTransition
from planty_broker.domain.stats.availability import (
    Availability,
    PresenceSpan,
    availability,
    presence_spans,
)

_STATES = tuple(PresenceState)
_STATE_CODE = {s: i for i, s in enumerate(_STATES)}
_CAUSES = tuple(PresenceCause)
_CAUSE_CODE = {c: i for i, c in enumerate(_CAUSES)}


class PresenceHistory:
    """Transitions newer than a cut-off (oldest first) and the state before the first of them."""

    __slots__ = ("_at", "_cause", "_state", "before")

    def __init__(self) -> None:
        self._at = array("q")
        self._state = bytearray()
        self._cause = bytearray()
        self.before: PresenceState | None = None  # None: not known (counts as unknown time)

    def __len__(self) -> int:
        return len(self._at)

    def add(self, at_ms: int, state: PresenceState, cause: PresenceCause) -> None:
        """One transition; in time order it is an append, a late one is inserted in place."""
        at, n = self._at, len(self._at)
        s, c = _STATE_CODE[state], _CAUSE_CODE[cause]
        i = n if not n or at[-1] <= at_ms else bisect_right(at, at_ms)
        # the same transition seen twice (bus, then the store on a re-load) is kept once
        j = i - 1
        while j >= 0 and at[j] == at_ms:
            if self._state[j] == s and self._cause[j] == c:
                return
            j -= 1
        at.insert(i, at_ms)
        self._state.insert(i, s)
        self._cause.insert(i, c)

    def load(self, stored: Iterable[PresenceTransition], before: PresenceState | None) -> None:
        """Merge transitions read from the store; `before` is the state in force before them."""
        for t in stored:
            self.add(t.at_ms, t.state, t.cause)
        if before is not None:
            self.before = before

    def trim(self, cutoff_ms: int) -> None:
        """Forget transitions at or before `cutoff_ms`, keeping the state they left in force."""
        at = self._at
        k = bisect_right(at, cutoff_ms)
        if k:
            self.before = _STATES[self._state[k - 1]]
            del at[:k], self._state[:k], self._cause[:k]

    def keep_newest(self, n: int) -> int:
        """Forget all but the newest `n` transitions (a device flapping for a week must not
        grow without bound); returns how many went."""
        extra = len(self._at) - n
        if extra > 0:
            self.trim(self._at[extra - 1])
        return max(extra, 0)

    @property
    def oldest_ms(self) -> int | None:
        return self._at[0] if self._at else None

    def transitions(self, device_id: str) -> list[PresenceTransition]:
        return [
            PresenceTransition(device_id, _STATES[s], at, _CAUSES[c])
            for at, s, c in zip(self._at, self._state, self._cause, strict=True)
        ]

    def _since(
        self, device_id: str, start_ms: int
    ) -> tuple[list[PresenceTransition], PresenceState | None]:
        """Transitions from the last one at or before `start_ms` on, and the state before those."""
        k = bisect_right(self._at, start_ms)
        first = max(k - 1, 0)
        before = self.before if first == 0 else _STATES[self._state[first - 1]]
        out = [
            PresenceTransition(
                device_id, _STATES[self._state[i]], self._at[i], _CAUSES[self._cause[i]]
            )
            for i in range(first, len(self._at))
        ]
        return out, before

    def availability(self, device_id: str, start_ms: int, end_ms: int) -> Availability:
        """Exact time in each state over [start_ms, end_ms) (see `domain.availability`)."""
        transitions, before = self._since(device_id, start_ms)
        return availability(transitions, start_ms, end_ms, state_before=before)

    def spans(self, device_id: str, start_ms: int, end_ms: int) -> list[PresenceSpan]:
        """The window cut into spans of one state each (the presence timeline)."""
        transitions, before = self._since(device_id, start_ms)
        return presence_spans(transitions, start_ms, end_ms, state_before=before)

    def last_cause(self, state: PresenceState) -> PresenceCause | None:
        """The cause of the newest transition into `state`, if one is kept."""
        code = _STATE_CODE[state]
        for i in range(len(self._at) - 1, -1, -1):
            if self._state[i] == code:
                return _CAUSES[self._cause[i]]
        return None
