"""Dead letter routes: device messages the store refused for good, listed and purged."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from planty_broker.domain.dead_letters import DeadLetter
from planty_broker.errors import StoreError
from planty_broker.northbound.api.auth import Scope
from planty_broker.northbound.api.deps import AuditDep, SvcDep, require_scope
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.limits import INT64_MAX
from planty_broker.northbound.api.timefmt import iso
from planty_broker.services.context import Services
from planty_broker.services.dead_letters import DeadLetterService

router = APIRouter(tags=["dead letters"])
Writer = Depends(require_scope(Scope.SERVER))

DeviceQuery = Annotated[
    str | None, Query(max_length=128, description="only this device's dead letters")
]


def dead_letters_of(svc: Services) -> DeadLetterService:
    if svc.dead_letters is None:
        raise ApiError(503, "unavailable", "dead letters are not kept in this gateway")
    return svc.dead_letters


def letter_json(d: DeadLetter) -> dict[str, Any]:
    """The payload as text when it is UTF-8, else base64 (`payload_base64`)."""
    out: dict[str, Any] = {
        "id": d.id,
        "device_id": d.device_id,
        "topic": d.topic,
        "error": d.error,
        "at": iso(d.at_ms),
        "size": d.size,
        "truncated": d.size > len(d.payload),
    }
    try:
        out["payload"] = d.payload.decode("utf-8")
    except UnicodeDecodeError:
        out["payload_base64"] = base64.b64encode(d.payload).decode()
    return out


def _unavailable(exc: StoreError) -> ApiError:
    return ApiError(503, "store_unavailable", str(exc))


@router.get(
    "/dead-letters",
    responses={503: {"description": "the store is unavailable; retry"}},
)
async def list_dead_letters(
    svc: SvcDep,
    device: DeviceQuery = None,
    before: Annotated[
        int | None, Query(ge=1, le=INT64_MAX, description="page back: ids below this")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Messages the store refused for good, newest first; pass `next_before` back as
    `before` for the next page. `held` counts what is kept, per device."""
    dead = dead_letters_of(svc)
    try:
        found = await dead.list(device, before, limit)
    except StoreError as exc:
        raise _unavailable(exc) from None
    return {
        "dead_letters": [letter_json(d) for d in found],
        "count": len(found),
        "next_before": found[-1].id if len(found) == limit else None,
        "held": dict(sorted(dead.held.items())),
        "total": dead.total_held,
    }


@router.delete(
    "/dead-letters",
    dependencies=[Writer],
    responses={503: {"description": "the store is unavailable; retry"}},
)
async def purge_dead_letters(
    svc: SvcDep,
    audit: AuditDep,
    device: DeviceQuery = None,
    through: Annotated[
        int | None, Query(ge=1, le=INT64_MAX, description="only ids up to this one")
    ] = None,
) -> dict[str, Any]:
    """Delete dead letters: every one, one device's, or those up to an id."""
    try:
        n = await dead_letters_of(svc).purge(device, through)
    except StoreError as exc:
        raise _unavailable(exc) from None
    await audit("dead_letters.purged", device_id=device, through=through, purged=n)
    return {"purged": n}
