"""The fleet list, page by page: search by id or name, filter by presence, stable order.

Pages are in device-id order and continue *after* the last id of the previous page
(keyset paging): a device added or removed meanwhile never shifts a page, repeats a
device or skips one. One pass over the registry's sorted ids finds what matches
(a dict lookup and a substring test per device, ~1 ms per 1,000 devices); only the
page's own devices are rendered by the caller.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from planty_broker.domain.models import DeviceRecord, PresenceState
from planty_broker.services.registry import DeviceRegistry

StateFilter = Literal["online", "offline"]
ONLINE_STATES = frozenset({PresenceState.ONLINE, PresenceState.LATE})
MAX_QUERY = 200


@dataclass(frozen=True, slots=True)
class FleetPage:
    devices: list[DeviceRecord]
    total: int  # devices that match (every page)
    online: int  # of those, online (or late)
    next_after: str | None  # the last id of this page when more follow, else None
    prev_after: str | None  # where the previous page starts after ("" = the first page)
    has_prev: bool
    start: int  # position of this page's first device among the matching ones (0-based)


def select(
    registry: DeviceRegistry,
    state_of: Callable[[str], PresenceState],
    *,
    q: str | None = None,
    state: StateFilter | None = None,
    after: str | None = None,
    limit: int = 100,
) -> FleetPage:
    """The page of matching devices after `after` (an id; None or "": from the start)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    needle = (q or "").strip().lower()[:MAX_QUERY]
    get = registry.get
    matching: list[str] = []
    online = 0
    for device_id in registry.ids():
        if needle and needle not in device_id:
            record = get(device_id)
            name = record.name if record is not None else None
            if not name or needle not in name.lower():
                continue
        is_online = state_of(device_id) in ONLINE_STATES
        if state is not None and is_online != (state == "online"):
            continue
        matching.append(device_id)
        online += is_online
    start = bisect.bisect_right(matching, after) if after else 0
    page_ids = matching[start : start + limit]
    more = start + limit < len(matching)
    prev_start = max(0, start - limit)
    devices = [d for d in (get(i) for i in page_ids) if d is not None]
    return FleetPage(
        devices=devices,
        total=len(matching),
        online=online,
        next_after=page_ids[-1] if more and page_ids else None,
        prev_after=matching[prev_start - 1] if prev_start > 0 else "",
        has_prev=start > 0,
        start=start,
    )
