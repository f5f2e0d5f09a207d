"""PresenceHistory: order, duplicates, trimming, and exact availability over it."""

from __future__ import annotations

from planty_broker.domain.models import PresenceCause, PresenceState, PresenceTransition
from planty_broker.domain.stats.availability import availability
from planty_broker.services.stats.history import PresenceHistory

ON, LATE, OFF, UNK = (
    PresenceState.ONLINE,
    PresenceState.LATE,
    PresenceState.OFFLINE,
    PresenceState.UNKNOWN,
)
MSG, WILL, SIL = PresenceCause.MESSAGE, PresenceCause.LAST_WILL, PresenceCause.SILENCE


def test_out_of_order_and_duplicates_are_merged() -> None:
    h = PresenceHistory()
    h.add(3000, OFF, WILL)
    h.add(1000, ON, MSG)
    h.add(3000, OFF, WILL)  # the bus and the store both report it
    h.add(2000, LATE, SIL)
    assert [(t.at_ms, t.state) for t in h.transitions("d")] == [
        (1000, ON),
        (2000, LATE),
        (3000, OFF),
    ]


def test_availability_is_exact_on_a_known_history() -> None:
    h = PresenceHistory()
    for at, state, cause in [(1000, ON, MSG), (4000, LATE, SIL), (5000, OFF, SIL), (7000, ON, MSG)]:
        h.add(at, state, cause)
    a = h.availability("d", 0, 10_000)
    # before 1000 nothing is known; then 3 s online, 1 s late, 2 s offline, 3 s online
    assert (a.unknown_ms, a.online_ms, a.late_ms, a.offline_ms) == (1000, 6000, 1000, 2000)
    assert a.share == 6000 / 9000
    # a window starting mid-history uses the state in force at its start
    b = h.availability("d", 4500, 6000)
    assert (b.late_ms, b.offline_ms, b.unknown_ms) == (500, 1000, 0)


def test_trim_keeps_the_state_in_force() -> None:
    h = PresenceHistory()
    for at, state in [(1000, ON), (2000, OFF), (3000, ON)]:
        h.add(at, state, MSG)
    before = h.availability("d", 2500, 4000)
    h.trim(2500)
    assert len(h) == 1 and h.before is OFF
    assert h.availability("d", 2500, 4000) == before
    assert [(s.state, s.start_ms, s.end_ms) for s in h.spans("d", 2500, 4000)] == [
        (OFF, 2500, 3000),
        (ON, 3000, 4000),
    ]


def test_load_merges_with_what_the_bus_already_gave() -> None:
    h = PresenceHistory()
    h.add(5000, ON, MSG)  # seen live while the store was being read
    stored = [
        PresenceTransition("d", OFF, 2000, WILL),
        PresenceTransition("d", ON, 5000, MSG),
    ]
    h.load(stored, before=ON)
    assert len(h) == 2 and h.before is ON
    expected = availability(stored, 0, 6000, state_before=ON)
    assert h.availability("d", 0, 6000) == expected
    assert h.last_cause(OFF) is WILL
