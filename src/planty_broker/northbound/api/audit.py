"""The audit trail (admin only): admin actions with who did them and from where.

Audit events are events of type `audit` in the event log (docs/events.md lists the
actions); this route reads them after a cursor, oldest first, with filters. A call
looks at no more than `SCAN_MAX` events of the log: when the filters match few, the
page may be short or empty with `next_after` moved on (call again from there).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from planty_broker.domain.events import EventType
from planty_broker.northbound.api.deps import SvcDep, require_scope
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.limits import INT64_MAX
from planty_broker.northbound.api.timefmt import iso
from planty_broker.services.events import EventService

router = APIRouter(tags=["audit"])
AdminOnly = Depends(require_scope())
SCAN_MAX = 10_000  # audit events looked at per call
_PAGE = 1000
_TYPES = [EventType.AUDIT.value]


_TOP = ("action", "actor", "actor_token", "client")


def entry_json(
    event_id: int, at_ms: int, device_id: str | None, data: dict[str, Any]
) -> dict[str, Any]:
    """One audit entry: who, from where, what, and the action's own `details`."""
    out: dict[str, Any] = {"id": event_id, "at": iso(at_ms), "at_ms": at_ms}
    out.update({k: data.get(k) for k in _TOP})
    out["device_id"] = device_id
    out["details"] = {k: v for k, v in data.items() if k not in _TOP}
    return out


@router.get("/audit", dependencies=[AdminOnly])
async def read_audit(
    svc: SvcDep,
    after: Annotated[
        int, Query(ge=0, le=INT64_MAX, description="entries with event id > after")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    action: Annotated[
        str | None,
        Query(max_length=100, description="an action (`token.created`) or its group (`token`)"),
    ] = None,
    actor: Annotated[
        str | None, Query(max_length=200, description="the acting token's name or id")
    ] = None,
    device: Annotated[str | None, Query(max_length=200, description="one device's")] = None,
) -> dict[str, Any]:
    """Admin actions after a cursor, oldest first; pass `next_after` back as `after`."""
    events = svc.events
    if not isinstance(events, EventService):
        raise ApiError(503, "unavailable", "the event log is not running")
    out: list[dict[str, Any]] = []
    cursor, scanned = after, 0
    while len(out) < limit and scanned < SCAN_MAX:
        page = await events.read(cursor, _PAGE, _TYPES)
        if not page.events:
            break
        for e in page.events:
            scanned += 1
            cursor = e.id
            d = e.data
            if (
                action
                and d.get("action") != action
                and not str(d.get("action")).startswith(action + ".")
            ):
                continue
            if actor and actor not in (d.get("actor"), d.get("actor_token")):
                continue
            if device and e.device_id != device:
                continue
            out.append(entry_json(e.id, e.at_ms, e.device_id, d))
            if len(out) >= limit:
                break
    return {"entries": out, "count": len(out), "next_after": cursor}
