"""Readiness: is the gateway doing its job right now, and if not, why (issue 11).

`/healthz` stays a liveness probe (the process answers). Readiness (`/readyz`, `planty
status`, the dashboard, `planty_ready` in /metrics) turns false, with one reason per
failing check, when:
- `store`: a writer (readings, command journal, event log) has failed to commit for more
  than `health.store_failing_s` (the data is held, nothing is acknowledged meanwhile);
- `ingest`: messages are pending and nothing was committed or handled for more than
  `health.ingest_stuck_s`;
- `mqtt`: the gateway's own link to the MQTT server is down;
- `loops`: a supervised background loop died and waits for its restart (tasks.Supervisor).
Everything is read from live state on the monotonic clock; nothing here does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from planty_broker.services.context import Services
    from planty_broker.tasks import Supervisor

CHECKS = ("store", "ingest", "mqtt", "loops")


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: list[str] = field(default_factory=list)
    failing: dict[str, bool] = field(default_factory=dict)  # check -> failing now
    # Not a reason to route traffic away, but an operator must act (a certificate that
    # ends within 30 days).
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "reasons": self.reasons,
            "checks": {name: not bad for name, bad in self.failing.items()},
            "warnings": self.warnings,
        }


class HealthService:
    """Computes readiness from the running services and the supervisor."""

    def __init__(
        self,
        svc: Services,
        supervisor: Supervisor | None,
        *,
        store_failing_s: float = 10.0,
        ingest_stuck_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._svc = svc
        self._supervisor = supervisor
        self._store_failing_s = store_failing_s
        self._ingest_stuck_s = ingest_stuck_s
        self._clock = clock

    @property
    def supervisor(self) -> Supervisor | None:
        return self._supervisor

    def readiness(self) -> Readiness:
        now = self._clock()
        reasons: dict[str, list[str]] = {name: [] for name in CHECKS}
        svc = self._svc
        writers: list[tuple[str, Any]] = [
            ("readings", svc.ingest.writer),
            ("statuses", svc.ingest.statuses),
        ]
        if svc.commands is not None:
            writers.append(("commands", svc.commands.outbox.journal))
        if svc.events is not None:
            writers.append(("events", svc.events.writer))
        for name, w in writers:
            since = w.failing_since
            if since is not None and now - since > self._store_failing_s:
                error = getattr(w, "last_error", "") or "see the log"
                reasons["store"].append(
                    f"store: the {name} writer has failed to commit for {now - since:.0f} s "
                    f"({error}); the data is held and retried"
                )
        stuck = svc.ingest.stuck_for(now)
        if stuck > self._ingest_stuck_s:
            reasons["ingest"].append(
                f"ingest: {svc.ingest.total_pending()} message(s) pending and nothing "
                f"committed for {stuck:.0f} s"
            )
        link = svc.link
        if link is None or not link.connected:
            reasons["mqtt"].append("mqtt: the gateway's link to the MQTT server is down")
        if self._supervisor is not None:
            for loop in self._supervisor.down():
                down_s = now - loop.down_since if loop.down_since is not None else 0.0
                reasons["loops"].append(
                    f"loops: background loop {loop.name} died {down_s:.0f} s ago "
                    f"({loop.last_error}); restarting"
                )
        flat = [r for name in CHECKS for r in reasons[name]]
        warn = getattr(getattr(svc, "authority", None), "expiry_warnings", None)
        warnings = list(warn()) if warn is not None else []
        return Readiness(not flat, flat, {name: bool(reasons[name]) for name in CHECKS}, warnings)
