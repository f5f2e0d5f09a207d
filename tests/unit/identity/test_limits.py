"""FailureLimiter: a sliding window per key, bounded keys, eviction that never refuses anyone."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI, Request

from planty_broker.northbound.api.deps import client_address
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


def test_a_forwarded_caller_is_keyed_under_the_worker_that_forwarded_it() -> None:
    assert client_key("10.0.0.9>2001:db8::5") == "10.0.0.9>2001:db8::/64"
    assert client_key("10.0.0.9>10.1.1.1") != client_key("10.0.0.8>10.1.1.1")


async def test_the_forwarded_caller_header_counts_only_in_scale_out() -> None:
    async def seen(engine: str, headers: dict[str, str]) -> str:
        app = FastAPI()
        app.state.services = SimpleNamespace(
            settings=SimpleNamespace(cluster=SimpleNamespace(engine=engine))
        )

        @app.get("/who")
        async def who(request: Request) -> str:
            return client_address(request)

        transport = httpx.ASGITransport(app=app, client=("10.0.0.9", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            answer: str = (await c.get("/who", headers=headers)).json()
        return answer

    named = {"x-planty-client": "192.0.2.7"}
    assert await seen("", named) == "10.0.0.9"  # one gateway: the header means nothing
    assert await seen("postgres", {}) == "10.0.0.9"
    assert await seen("postgres", named) == "10.0.0.9>192.0.2.7"
    assert await seen("postgres", {"x-planty-client": "<script>"}) == "10.0.0.9>?"
