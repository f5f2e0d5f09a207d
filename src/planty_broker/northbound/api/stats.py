"""Statistics routes: one device's figures and the fleet's, each over a `window`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from planty_broker.domain.stats.counters import parse_window
from planty_broker.northbound.api.deps import SvcDep
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.timefmt import iso
from planty_broker.services.context import Services
from planty_broker.services.registry import now_ms
from planty_broker.services.stats.service import StatsService

router = APIRouter(tags=["stats"])

WindowQuery = Annotated[
    str,
    Query(
        description="how far back: 1h, 1d or 7d (any N m/h/d/w up to 7d); latency in whole "
        "slots of 5 min (up to 1h), 1 h (up to 1d) or 1 d",
        examples=["1h", "1d", "7d"],
    ),
]


def stats_service(svc: Services) -> StatsService:
    stats: StatsService | None = svc.stats
    if stats is None:
        raise ApiError(
            404, "stats_disabled", "statistics are off on this gateway: set [stats] enabled = true"
        )
    return stats


def window_ms(window: str, stats: StatsService) -> int:
    try:
        return parse_window(window, stats.layout)
    except ValueError as exc:
        raise ApiError(422, "invalid_window", str(exc)) from None


def _stamp(out: dict[str, Any], window: str, wms: int, now: int) -> dict[str, Any]:
    return {"window": window.strip(), "window_ms": wms, "at": iso(now), "at_ms": now, **out}


@router.get("/devices/{device_id}/stats")
async def device_stats(device_id: str, svc: SvcDep, window: WindowQuery = "1h") -> dict[str, Any]:
    """One device: counters (since `since_ms`), errors by kind, reconnects by cause, vitals,
    latency percentiles and per-slot series, availability and presence timeline over `window`."""
    stats = stats_service(svc)
    if device_id not in svc.registry:
        raise ApiError(404, "unknown_device", f"no device with id {device_id!r}")
    wms = window_ms(window, stats)
    await stats.ensure_loaded(device_id)
    now = now_ms()
    p = svc.presence.get(device_id)
    out = stats.device_stats(device_id, wms, now)
    out["presence"] = {
        "state": p.state.value if p else "unknown",
        "since_ms": p.since_ms if p else None,
        "cause": p.cause.value if p else None,
    }
    return _stamp({"device_id": device_id, **out}, window, wms, now)


@router.get("/stats")
async def fleet_stats(svc: SvcDep, window: WindowQuery = "1h") -> dict[str, Any]:
    """The fleet: totals, presence by state, availability (time-weighted over every device),
    fleet latency percentiles and series, errors not attributable to a device."""
    stats = stats_service(svc)
    wms = window_ms(window, stats)
    now = now_ms()
    out = stats.fleet_stats(wms, now)
    out["ingest"] = {
        "unknown_device_messages": svc.ingest.unknown_device_messages,
        "bad_topic_messages": svc.ingest.bad_topic_messages,
        "store_pending": svc.ingest.writer.pending(),
    }
    out["complete"] = stats.backfilled.is_set()
    return _stamp(out, window, wms, now)
