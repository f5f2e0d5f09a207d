"""FailureLimiter: a sliding window per key, bounded keys, eviction that never refuses anyone."""

from __future__ import annotations

import pytest

from planty_broker.services.access.limits import FailureLimiter, client_key


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_key_is_limited_after_its_failures_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    lim = FailureLimiter(3, 60, monotonic=clock)
    for _ in range(3):
        assert lim.retry_after("a") is None
        lim.failed("a")
        clock.t += 10
    assert lim.retry_after("a") == pytest.approx(30)  # the first failure leaves at +60
    assert lim.retry_after("b") is None
    clock.t += 30
    assert lim.retry_after("a") is None and lim.count("a") == 2


def test_keys_are_bounded_and_the_oldest_is_forgotten() -> None:
    clock = Clock()
    lim = FailureLimiter(2, 60, max_keys=100, monotonic=clock)
    for _ in range(2):
        lim.failed("early")
    for n in range(100):
        clock.t += 0.01
        lim.failed(f"k{n}")
    assert len(lim) == 100 and lim.evicted == 1
    assert lim.count("early") == 0  # forgotten: looser, never stricter
    lim.failed("k0")  # a failure makes a key the newest again
    lim.failed("new")
    assert lim.count("k0") == 2 and lim.count("k1") == 0


def test_memory_per_key_is_bounded_by_the_limit() -> None:
    lim = FailureLimiter(5, 60, monotonic=Clock())
    for _ in range(10_000):
        lim.failed("x")
    assert lim.count("x") == 5


def test_client_keys() -> None:
    assert client_key("127.0.0.2") == "127.0.0.2"
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert client_key("firestore:acc") == "firestore:acc"
