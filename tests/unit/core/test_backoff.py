"""The one retry delay every loop uses: doubling up to a cap, reset, jitter within bounds."""

from __future__ import annotations

import random

import pytest

from planty_broker.backoff import Backoff


def test_delays_double_up_to_the_cap_and_reset_starts_small_again() -> None:
    b = Backoff(0.1, 0.5)
    assert [b.next() for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    b.reset()
    assert b.next() == pytest.approx(0.1)


def test_jitter_stays_within_its_bounds() -> None:
    random.seed(7)
    b = Backoff(1.0, 1.0, jitter=0.5)
    delays = [b.next() for _ in range(200)]
    assert all(0.5 <= d < 1.5 for d in delays)
    assert max(delays) - min(delays) > 0.5  # spread, not constant


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(2.0, 1.0)


async def test_sleep_returns_each_delay_as_it_grows() -> None:
    b = Backoff(0.001, 0.002)
    assert [await b.sleep() for _ in range(3)] == pytest.approx([0.001, 0.002, 0.002])
