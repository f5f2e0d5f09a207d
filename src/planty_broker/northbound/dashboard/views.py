"""What the dashboard templates show, computed from the services (no HTTP here)."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

from planty_broker.domain.models import DeviceRecord, PresenceState
from planty_broker.domain.stats.counters import parse_window
from planty_broker.domain.stats.windowed import HOUR_MS
from planty_broker.services.context import Services
from planty_broker.services.fleet_list import StateFilter, select
from planty_broker.services.registry import now_ms

WINDOWS = ("1h", "1d", "7d", "30d")
STATS_MAX_WINDOW = "7d"  # statistics keep a week; the 30-day view shows readings from rollups
TIMELINE_WIDTH = 1000  # SVG user units of the presence timeline


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the fleet table."""

    id: str
    name: str | None
    state: str
    since_ms: int | None
    cause: str | None
    last_seen_ms: int | None
    readings: list[tuple[str, float]]
    availability: float | None
    p99_ms: float | None
    latency_count: int
    latency_max_ms: float | None
    errors: int
    messages: int


def row(svc: Services, d: DeviceRecord) -> Row:
    p = svc.presence.get(d.id)
    stats = svc.stats
    s = stats.fleet.get(d.id) if stats is not None else None
    summary = stats.device_summary(d.id)["stats"] if stats is not None else None
    latest = svc.ingest.latest.get(d.id)
    # the device's own last message (not its last will), as in the device list
    last_seen = p.last_seen_ms if p is not None else None
    if last_seen is None and s is not None:
        last_seen = s.last_message_ms
    return Row(
        id=d.id,
        name=d.name,
        state=(p.state if p else PresenceState.UNKNOWN).value,
        since_ms=p.since_ms if p else None,
        cause=p.cause.value if p else None,
        last_seen_ms=last_seen,
        readings=sorted(latest.values.items()) if latest else [],
        availability=summary["availability_1h"] if summary else None,
        p99_ms=summary["latency_p99_ms_1h"] if summary else None,
        latency_count=summary["latency_count_1h"] if summary else 0,
        latency_max_ms=summary["latency_max_ms_1h"] if summary else None,
        errors=summary["errors_total"] if summary else 0,
        messages=s.msgs_in if s is not None else 0,
    )


PAGE_SIZE = 50  # rows of the fleet table per page
HEADLINE_MAX_AGE_S = 2.0  # the fleet figures (O(fleet) to compute) are shared this long
CACHE_HEADLINE_FROM = 1000  # devices; a smaller fleet's figures are always fresh
_headline_cache: weakref.WeakKeyDictionary[Any, tuple[float, dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _fleet_stats(stats: Any) -> dict[str, Any]:
    """The fleet's hour figures for the headline, computed at most every 2 s: every page,
    search and live refresh of the table would otherwise walk the whole fleet's windows
    (~100 ms at 10,000 devices)."""
    now = time.monotonic()
    hit = _headline_cache.get(stats)
    if hit is not None and now - hit[0] < HEADLINE_MAX_AGE_S:
        return hit[1]
    f: dict[str, Any] = stats.fleet_stats(HOUR_MS)
    _headline_cache[stats] = (now, f)
    return f


def fleet(
    svc: Services,
    *,
    q: str | None = None,
    state: StateFilter | None = None,
    after: str | None = None,
    limit: int = PAGE_SIZE,
) -> dict[str, Any]:
    """One page of the fleet table (search, presence filter) and the whole fleet's figures."""
    presence = svc.presence

    def state_of(device_id: str) -> PresenceState:
        p = presence.get(device_id)
        return p.state if p is not None else PresenceState.UNKNOWN

    page = select(svc.registry, state_of, q=q, state=state, after=after, limit=limit)
    rows = [row(svc, d) for d in page.devices]
    rows.sort(key=lambda r: r.state == PresenceState.NEVER_SEEN.value)  # shown apart, last
    counts = dict.fromkeys((s.value for s in PresenceState), 0)
    for device_id in svc.registry.ids():  # the headline counts the whole fleet
        counts[state_of(device_id).value] += 1
    stats = svc.stats
    headline: dict[str, Any] = {"devices": len(svc.registry), **counts}
    if stats is not None:
        f = (
            _fleet_stats(stats)
            if len(svc.registry) > CACHE_HEADLINE_FROM
            else stats.fleet_stats(HOUR_MS)
        )
        headline["availability"] = f["availability"]["share"]
        headline["p99_ms"] = f["latency"]["p99_ms"]
        headline["latency_count"] = f["latency"]["count"]
        headline["latency_max_ms"] = f["latency"]["max_ms"]
        headline["errors"] = f["errors_total"]
    pager = {
        "first": page.start + 1 if rows else 0,
        "last": page.start + len(rows),
        "total": page.total,
        "next": page.next_after,
        "prev": page.prev_after if page.has_prev else None,
        "filtered": bool((q or "").strip() or state),
    }
    return {"rows": rows, "headline": headline, "pager": pager}


def window_or_default(window: str | None) -> str:
    return window if window in WINDOWS else "1h"


def stats_window(window: str) -> str:
    """The statistics window shown with a chart window (statistics keep at most a week)."""
    return STATS_MAX_WINDOW if window == "30d" else window


def device_panel(svc: Services, d: DeviceRecord, window: str) -> dict[str, Any]:
    """Presence, vitals, counters, availability and the timeline of one device."""
    now = now_ms()
    window = stats_window(window)
    wms = parse_window(window)
    stats = svc.stats
    figures = stats.device_stats(d.id, wms, now) if stats is not None else None
    bars: list[dict[str, Any]] = []
    if figures is not None:
        start = now - wms
        for span in figures["timeline"]:
            x = (span["start_ms"] - start) * TIMELINE_WIDTH / wms
            w = (span["end_ms"] - span["start_ms"]) * TIMELINE_WIDTH / wms
            bars.append({**span, "x": round(x, 2), "w": round(max(w, 0.5), 2)})
    return {
        "device": d,
        "row": row(svc, d),
        "window": window,
        "windows": WINDOWS,
        "figures": figures,
        "bars": bars,
        "timeline_width": TIMELINE_WIDTH,
        "now_ms": now,
        "window_ms": wms,
    }


async def command_history(svc: Services, device_id: str, limit: int = 20) -> list[Any] | None:
    """The newest commands of a device, live states included (None: no command outbox)."""
    commands = svc.commands
    if commands is None:
        return None
    records: list[Any] = await commands.find(device_id, None, limit)
    return records
