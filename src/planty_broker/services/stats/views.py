"""Plain-value views of the statistics for the API and the dashboard charts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from planty_broker.domain.stats.availability import PresenceSpan
from planty_broker.domain.stats.windowed import WindowedSketch

SERIES_QUANTILES = (0.5, 0.95, 0.99)
MAX_SPANS = 500  # a timeline longer than this keeps its newest spans


def latency_series(sketch: WindowedSketch, window_ms: int, now_ms: int) -> list[dict[str, Any]]:
    """Per time slot of the window (5 min for 1 h, 1 h for 1 d, 1 d for 7 d): count, max and
    nearest-rank quantiles (never below the exact ones: a slot of four with one slow answer
    has that answer as its p99).

    Empty slots are left out, so a chart shows gaps where nothing was measured.
    """
    out: list[dict[str, Any]] = []
    for start_ms, slot_ms, slot in sketch.slots(window_ms, now_ms):
        p50, p95, p99 = slot.quantiles(SERIES_QUANTILES)
        out.append(
            {
                "t_ms": start_ms,
                "slot_ms": slot_ms,
                "count": slot.count,
                "max_ms": slot.max,
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
            }
        )
    return out


def spans_json(spans: Sequence[PresenceSpan]) -> list[dict[str, Any]]:
    """The presence timeline as plain values, newest `MAX_SPANS` at most."""
    return [
        {"state": s.state.value, "start_ms": s.start_ms, "end_ms": s.end_ms}
        for s in spans[-MAX_SPANS:]
    ]
