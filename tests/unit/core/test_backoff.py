"""The one retry delay every loop uses: doubling up to a cap, reset, jitter within bounds."""

from __future__ import annotations

import logging
import random

import pytest

from planty_broker.backoff import Backoff
from planty_broker.transport.reconnect import Connects, Reconnect


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


def test_both_links_reconnect_the_same_way(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "planty_broker.transport")
    r = Reconnect("test link", Backoff(1.0, 4.0))
    assert r.up("node-1") is False and r.count == 0  # the first connection is no reconnect
    r.lost("node-1")
    assert [r.failed("node-2", OSError("refused")) for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert r.up("node-2") is True and r.count == 1
    assert r.failed("node-2") == 1.0  # small again after a success
    text = caplog.text
    assert "test link to node-1 lost" in text and "test link to node-2 restored" in text
    assert "reconnect failed (refused); next try in 2.0 s" in text


async def test_a_link_is_an_async_context_manager() -> None:
    calls: list[str] = []

    class Link(Connects):
        async def connect(self) -> None:
            calls.append("connect")

        async def close(self) -> None:
            calls.append("close")

    async with Link() as link:
        assert isinstance(link, Link)
    assert calls == ["connect", "close"]
