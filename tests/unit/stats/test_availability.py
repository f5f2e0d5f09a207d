"""Availability is exact on constructed presence histories."""

from __future__ import annotations

import random

import pytest

from planty_broker.domain.models import PresenceCause, PresenceState, PresenceTransition
from planty_broker.domain.stats.availability import (
    Availability,
    PresenceSpan,
    availability,
    presence_spans,
)

MIN = 60_000
T0 = 1_764_000_000_000
ON, LATE, OFF, UNK = (
    PresenceState.ONLINE,
    PresenceState.LATE,
    PresenceState.OFFLINE,
    PresenceState.UNKNOWN,
)


def tr(state: PresenceState, minute: float, device: str = "dev-1") -> PresenceTransition:
    return PresenceTransition(device, state, T0 + int(minute * MIN), PresenceCause.MESSAGE)


def test_online_45_of_60_minutes_is_exactly_three_quarters() -> None:
    history = [tr(ON, 0), tr(OFF, 30), tr(ON, 45)]
    a = availability(history, T0, T0 + 60 * MIN)
    assert a.share == 0.75
    assert (a.online_ms, a.offline_ms, a.late_ms, a.unknown_ms) == (45 * MIN, 15 * MIN, 0, 0)


def test_unknown_time_is_counted_apart_and_left_out_of_the_share() -> None:
    # online 20 min, broker down 20 min, online 10, offline 10
    history = [tr(ON, 0), tr(UNK, 20), tr(ON, 40), tr(OFF, 50)]
    a = availability(history, T0, T0 + 60 * MIN)
    assert a.unknown_ms == 20 * MIN
    assert a.known_ms == 40 * MIN
    assert a.share == 0.75  # 30 online of 40 known, not 30 of 60


def test_late_is_not_online_but_not_offline_either() -> None:
    history = [tr(ON, 0), tr(LATE, 40), tr(OFF, 50)]
    a = availability(history, T0, T0 + 60 * MIN)
    assert a.late_ms == 10 * MIN
    assert a.share == pytest.approx(40 / 60)
    assert a.share_not_offline == pytest.approx(50 / 60)


def test_state_carried_in_from_before_the_window_when_nothing_changes() -> None:
    a = availability([], T0, T0 + 60 * MIN, state_before=ON)
    assert a.share == 1.0
    assert a.online_ms == 60 * MIN
    b = availability([tr(OFF, -300)], T0, T0 + 60 * MIN)  # an old transition, before the window
    assert b.share == 0.0
    assert b.offline_ms == 60 * MIN


def test_window_before_the_first_known_state_is_unknown() -> None:
    a = availability([tr(ON, 15)], T0, T0 + 60 * MIN)
    assert a.unknown_ms == 15 * MIN
    assert a.online_ms == 45 * MIN
    assert a.share == 1.0
    nothing = availability([], T0, T0 + 60 * MIN)
    assert nothing.share is None
    assert nothing.unknown_ms == 60 * MIN


def test_unsorted_and_duplicate_transitions_give_the_same_answer() -> None:
    history = [tr(ON, 0), tr(ON, 10), tr(OFF, 30), tr(OFF, 30), tr(ON, 45), tr(ON, 45)]
    shuffled = history[:]
    random.Random(7).shuffle(shuffled)
    assert availability(shuffled, T0, T0 + 60 * MIN) == availability(history, T0, T0 + 60 * MIN)
    assert availability(shuffled, T0, T0 + 60 * MIN).share == 0.75


def test_same_instant_transitions_keep_their_order_the_last_wins() -> None:
    a = availability([tr(ON, 0), tr(OFF, 30), tr(ON, 30)], T0, T0 + 60 * MIN)
    assert a.share == 1.0


def test_transitions_after_the_window_are_ignored() -> None:
    a = availability([tr(ON, 0), tr(OFF, 60), tr(OFF, 90)], T0, T0 + 60 * MIN)
    assert a.share == 1.0


def test_spans_make_a_timeline_that_covers_the_window_once() -> None:
    history = [tr(OFF, -10), tr(ON, 5), tr(ON, 6), tr(LATE, 20), tr(ON, 21), tr(UNK, 50)]
    spans = presence_spans(history, T0, T0 + 60 * MIN)
    assert spans == [
        PresenceSpan(OFF, T0, T0 + 5 * MIN),
        PresenceSpan(ON, T0 + 5 * MIN, T0 + 20 * MIN),
        PresenceSpan(LATE, T0 + 20 * MIN, T0 + 21 * MIN),
        PresenceSpan(ON, T0 + 21 * MIN, T0 + 50 * MIN),
        PresenceSpan(UNK, T0 + 50 * MIN, T0 + 60 * MIN),
    ]
    assert sum(s.duration_ms for s in spans) == 60 * MIN


def test_random_histories_add_up_to_the_window() -> None:
    rng = random.Random(3)
    states = list(PresenceState)
    for _ in range(200):
        history = [tr(rng.choice(states), rng.uniform(-30, 90)) for _ in range(rng.randint(0, 12))]
        a = availability(history, T0, T0 + 60 * MIN, state_before=rng.choice([None, *states]))
        assert a.known_ms + a.unknown_ms == 60 * MIN
        assert a.share is None or 0.0 <= a.share <= 1.0


def test_fleet_total_weighs_devices_by_known_time() -> None:
    a = availability([tr(ON, 0)], T0, T0 + 60 * MIN)  # 60 online
    b = availability([tr(ON, 0, "dev-2"), tr(OFF, 30, "dev-2")], T0, T0 + 60 * MIN)  # 30 of 60
    c = availability([], T0, T0 + 60 * MIN)  # nothing known
    fleet = Availability.total([a, b, c], T0, T0 + 60 * MIN)
    assert fleet.share == 0.75
    assert fleet.unknown_ms == 60 * MIN


def test_refuses_a_backwards_window_and_mixed_devices() -> None:
    with pytest.raises(ValueError, match="ends before"):
        availability([], T0, T0 - 1)
    with pytest.raises(ValueError, match="several devices"):
        availability([tr(ON, 0), tr(OFF, 5, "dev-2")], T0, T0 + MIN)


def test_as_dict_has_the_api_fields() -> None:
    d = availability([tr(ON, 0), tr(OFF, 30), tr(ON, 45)], T0, T0 + 60 * MIN).as_dict()
    assert d["share"] == 0.75
    assert d["online_ms"] == 45 * MIN
    assert d["start_ms"] == T0
