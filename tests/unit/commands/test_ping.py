"""The pinger: every online device is pinged once per interval, however big the fleet."""

from __future__ import annotations

import pytest

from planty_broker.services.bus import Bus
from planty_broker.services.commands.dispatch import Dispatcher
from planty_broker.services.commands.ping import Pinger, RttBook
from tests.unit.commands.harness import TOPICS, FakeLink

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = 1_800_000_000_000


async def test_a_round_pings_every_due_device_even_beyond_the_token_burst() -> None:
    """The dispatcher's bucket holds 5 tokens; 500 devices are due: the round waits for
    tokens (paced) instead of leaving the rest to the next round. Before, a round stopped at
    the first missing token, and 10,000 devices got ~8 of their 60 pings an hour."""
    devices = [f"dev-{i}" for i in range(500)]
    now = [NOW]
    link, dispatcher, pinger = _pinger(devices, now)
    await pinger.tick(NOW)  # first sight: each device's first ping is spread over an interval
    assert pinger.sent == 0
    now[0] = NOW + 60_000
    await pinger.tick(now[0])  # all due now
    assert pinger.sent == 500
    assert sorted({d for d, _ in link.sent}) == sorted(devices)


async def test_waiting_commands_go_before_the_rest_of_a_round() -> None:
    now = [NOW]
    _link, dispatcher, pinger = _pinger([f"dev-{i}" for i in range(50)], now)
    await pinger.tick(NOW)
    dispatcher.enqueue("c-1")  # a command waits (the dispatcher's task is not running here)
    now[0] = NOW + 60_000
    await pinger.tick(now[0])
    assert pinger.sent == 0  # no ping takes a token while a command waits


async def _never(cid: str) -> None:
    raise AssertionError("no command is sent in these tests")


def _pinger(devices: list[str], now: list[int]) -> tuple[FakeLink, Dispatcher, Pinger]:
    """A pinger of these online devices on a dispatcher whose bucket holds 5 tokens."""
    link = FakeLink()
    dispatcher = Dispatcher(_never, rate_per_s=50_000, burst=5)
    dispatcher.link = link
    pinger = Pinger(
        dispatcher, TOPICS, Bus(), RttBook(), lambda: devices, lambda: now[0],
        interval_s=60, ack_timeout_s=10,
    )  # fmt: skip
    return link, dispatcher, pinger
