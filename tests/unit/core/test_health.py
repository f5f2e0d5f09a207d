"""Readiness reasons, one per failing check, on an injected clock (no gateway needed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from planty_broker.services.health import HealthService
from planty_broker.tasks import LoopState


class Writer:
    def __init__(self) -> None:
        self.failing_since: float | None = None
        self.last_error = ""
        self.stuck = 0.0

    def stuck_for(self, now: float) -> float:
        return self.stuck


class Ingest:
    def __init__(self) -> None:
        self.writer = Writer()
        self.statuses = Writer()
        self.stuck = 0.0

    def stuck_for(self, now: float) -> float:
        return self.stuck

    def total_pending(self) -> int:
        return 7


class Loops:
    def __init__(self) -> None:
        self.dead: list[LoopState] = []

    def down(self) -> list[LoopState]:
        return self.dead


def make() -> tuple[HealthService, Any, Loops, list[float]]:
    now = [100.0]
    svc = SimpleNamespace(
        ingest=Ingest(),
        commands=SimpleNamespace(outbox=SimpleNamespace(journal=Writer())),
        events=SimpleNamespace(writer=Writer()),
        link=SimpleNamespace(connected=True),
    )
    loops = Loops()
    health = HealthService(
        svc,  # type: ignore[arg-type]
        loops,  # type: ignore[arg-type]
        store_failing_s=10,
        ingest_stuck_s=30,
        clock=lambda: now[0],
    )
    return health, svc, loops, now


def test_ready_when_nothing_fails() -> None:
    health, *_ = make()
    r = health.readiness()
    assert r.ready and r.reasons == []
    assert r.as_json()["checks"] == {"store": True, "ingest": True, "mqtt": True, "loops": True}


def test_each_check_gives_its_reason() -> None:
    health, svc, loops, now = make()
    svc.commands.outbox.journal.failing_since = 95.0  # 5 s: not yet
    assert health.readiness().ready
    now[0] = 106.0  # 11 s > store_failing_s
    svc.commands.outbox.journal.last_error = "database disk is full"
    svc.ingest.stuck = 31.0
    svc.link.connected = False
    loops.dead = [LoopState("presence-check", crashes=1, down_since=104.0, last_error="KeyError")]
    r = health.readiness()
    assert not r.ready
    assert r.failing == {"store": True, "ingest": True, "mqtt": True, "loops": True}
    assert r.reasons == [
        "store: the commands writer has failed to commit for 11 s (database disk is full); "
        "the data is held and retried",
        "ingest: 7 message(s) pending and nothing committed for 31 s",
        "mqtt: the gateway's link to the MQTT server is down",
        "loops: background loop presence-check died 2 s ago (KeyError); restarting",
    ]
    assert health.readiness().as_json()["ready"] is False


def test_a_failing_statuses_writer_is_a_store_reason() -> None:
    """Statuses are written in batches of their own (issue 17): their writer counts too."""
    health, svc, _loops, now = make()
    svc.ingest.statuses.failing_since = 90.0
    svc.ingest.statuses.last_error = "database is locked"
    now[0] = 106.0
    r = health.readiness()
    assert r.failing["store"]
    assert r.reasons == [
        "store: the statuses writer has failed to commit for 16 s (database is locked); "
        "the data is held and retried"
    ]
