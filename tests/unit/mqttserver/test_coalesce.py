"""ReloadCoalescer: however many requests, at most one run per interval; waiters are
released by a run that started after them (counts and order, never wall-clock time)."""

from __future__ import annotations

import asyncio

import pytest

from planty_broker.mqttserver.coalesce import ReloadCoalescer


class Job:
    """Records the state version each run saw; can be held open or made to fail."""

    def __init__(self) -> None:
        self.version = 0
        self.seen: list[int] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self) -> None:
        self.seen.append(self.version)  # read the state first, as the real job does
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail


async def test_thirty_concurrent_changes_cost_at_most_two_runs() -> None:
    job = Job()
    reload = ReloadCoalescer(job, min_interval_s=0.05)
    waiters = []
    for _ in range(30):
        job.version += 1
        waiters.append(asyncio.create_task(reload()))
    await asyncio.gather(*waiters)
    assert reload.requests == 30
    assert reload.runs <= 2
    assert job.seen[-1] == 30  # the last run saw every change
    assert not reload.pending
    await reload.close()


async def test_a_change_during_a_run_goes_out_with_the_next_one() -> None:
    job = Job()
    job.gate = asyncio.Event()
    reload = ReloadCoalescer(job, min_interval_s=0.0)
    job.version = 1
    first = asyncio.create_task(reload())
    await job.started.wait()
    job.version = 2  # after the run read the state: not covered by it
    second = asyncio.create_task(reload())
    await asyncio.sleep(0)
    job.gate.set()
    await first
    assert not second.done() or job.seen == [1, 2]
    await second
    assert job.seen == [1, 2]
    await reload.close()


async def test_many_sequential_changes_are_spread_at_most_one_run_per_interval() -> None:
    job = Job()
    ticks = [0.0]
    slept: list[float] = []
    interval_over = asyncio.Event()

    async def sleep(delay: float) -> None:
        slept.append(delay)
        await interval_over.wait()

    reload = ReloadCoalescer(job, min_interval_s=30.0, clock=lambda: ticks[0], sleep=sleep)
    # A quiet coalescer runs the first request at once.
    job.version = 1
    await reload()
    assert job.seen == [1]
    # The next ones, within the interval, wait for it; every one of them is in that run.
    pending = []
    for n in range(2, 12):
        job.version = n
        pending.append(asyncio.create_task(reload()))
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert reload.runs == 1 and all(not p.done() for p in pending)
    assert slept == [30.0]  # it waits out the interval from the first run's start
    ticks[0] = 30.0
    interval_over.set()
    await asyncio.gather(*pending)
    assert job.seen == [1, 11]
    await reload.close()


async def test_request_does_not_wait_and_is_covered() -> None:
    job = Job()
    reload = ReloadCoalescer(job, min_interval_s=0.0)
    for n in range(1, 6):
        job.version = n
        reload.request()
    assert reload.pending
    await reload()  # a later waiter: returns after a run that saw everything
    assert job.seen[-1] == 5
    assert reload.runs <= 2
    await reload.close()


async def test_a_failed_run_reaches_its_waiters_and_the_next_request_runs_again() -> None:
    job = Job()
    job.fail = RuntimeError("files not written")
    reload = ReloadCoalescer(job, min_interval_s=0.0)
    with pytest.raises(RuntimeError, match="files not written"):
        await reload()
    job.fail = None
    await reload()
    assert reload.runs == 2
    await reload.close()


async def test_a_cancelled_waiter_does_not_stop_the_run() -> None:
    job = Job()
    job.gate = asyncio.Event()
    reload = ReloadCoalescer(job, min_interval_s=0.0)
    waiter = asyncio.create_task(reload())
    await job.started.wait()
    waiter.cancel()
    other = asyncio.create_task(reload())
    job.gate.set()
    await other
    assert reload.runs == 2
    await reload.close()


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="min_interval_s"):
        ReloadCoalescer(Job(), min_interval_s=-1)
