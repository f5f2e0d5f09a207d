"""One supervisor for every background loop: a crash is logged and restarted with backoff,
the loop counts as down meanwhile, a loop that finishes is not restarted, cancelling the
supervising task stops it for good. Waits on conditions, never on the wall clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

import planty_broker.tasks
from planty_broker.tasks import Supervisor, cancel_and_wait, wait_event

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def until(check, every: float = 0.001, limit: int = 20_000) -> None:  # type: ignore[no-untyped-def]
    for _ in range(limit):
        if check():
            return
        await asyncio.sleep(every)
    raise AssertionError("condition not met")


async def test_a_crashed_loop_is_logged_restarted_and_down_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = Supervisor(initial_s=0.05, max_s=0.2)
    runs: list[int] = []
    gate = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise RuntimeError(f"boom {len(runs)}")
        await gate.wait()

    with caplog.at_level(logging.ERROR, "planty_broker.tasks"):
        task = sup.spawn("worker", loop)
        await until(sup.down)  # died once: down, waiting for the restart
        state = sup.loops["worker"]
        assert not state.running and state.last_error == "RuntimeError: boom 1"
        await until(lambda: len(runs) == 3 and sup.loops["worker"].running)
    assert sup.down() == [] and state.crashes == 2 and state.restarts == 2
    assert "background loop worker died (RuntimeError: boom 1)" in caplog.text
    await cancel_and_wait([task])
    assert "worker" not in sup.loops  # stopped for good: no longer watched


async def test_a_killed_loop_is_restarted() -> None:
    sup = Supervisor(initial_s=0.05)
    started = 0

    async def loop() -> None:
        nonlocal started
        started += 1
        await asyncio.Event().wait()

    task = sup.spawn("flush", loop)
    await until(lambda: started == 1)
    assert sup.kill("flush")
    await until(lambda: bool(sup.down()))
    assert sup.down()[0].last_error == "cancelled from outside"
    await until(lambda: started == 2 and not sup.down())
    await cancel_and_wait([task])


async def test_a_loop_that_finishes_is_not_restarted_and_names_stay_unique() -> None:
    sup = Supervisor(initial_s=0.01)
    done = 0

    async def loop() -> None:
        nonlocal done
        done += 1

    first, second = sup.spawn("once", loop), sup.spawn("once", loop)
    assert set(sup.loops) == {"once", "once#2"}
    await asyncio.gather(first, second)
    assert done == 2 and sup.loops == {} and sup.down() == []


async def test_wait_event_never_loses_a_cancellation() -> None:
    """Cancelled in the same loop pass as its event is set, a loop waiting with `wait_event`
    ends (Python 3.11's `asyncio.wait_for` returned the event instead: the loop ran on)."""
    kick = asyncio.Event()
    passes = 0

    async def loop() -> None:
        nonlocal passes
        while True:
            await wait_event(kick, 30)
            kick.clear()
            passes += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # waiting on `kick`
    kick.set()
    task.cancel()
    await until(task.done)
    assert task.cancelled() and passes == 0
    assert await wait_event(kick, 0) is True
    kick.clear()
    assert await wait_event(kick, 0) is False  # not set: the timeout


async def test_a_loop_that_swallows_its_cancellation_is_cancelled_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planty_broker.tasks, "RECANCEL_S", 0.01)
    sup = Supervisor()
    swallowed = 0

    async def loop() -> None:  # a dependency that loses one cancellation
        nonlocal swallowed
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    task = sup.spawn("stubborn", loop)
    await until(lambda: sup.loops["stubborn"].running)
    with caplog.at_level(logging.WARNING, "planty_broker.tasks"):
        await cancel_and_wait([task])
    assert task.done() and swallowed == 1
    assert "background loop stubborn ran on after its cancellation" in caplog.text
