"""Event log routes: read after a cursor, stream (SSE with Last-Event-ID resume), consumers.

A reader never misses anything silently: when retention deleted events it had not
read, `GET /events` says so in `missed`, and the stream sends an `event: gap` first.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from planty_broker.domain.events import EVENT_TYPES, Consumer, Event, LogBounds
from planty_broker.northbound.api.auth import Scope
from planty_broker.northbound.api.deps import AuditDep, SvcDep, require_scope
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.limits import INT64_MAX
from planty_broker.northbound.api.timefmt import iso
from planty_broker.services.context import Services
from planty_broker.services.events import CursorError, EventPage, EventService

router = APIRouter(tags=["events"])
Writer = Depends(require_scope(Scope.SERVER))
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
STREAM_BATCH = 500


class CursorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    acked: int = Field(
        ge=0, le=INT64_MAX, description="the id of the last event this consumer has taken"
    )


def events_of(svc: Services) -> EventService:
    found = svc.events
    if not isinstance(found, EventService):
        raise ApiError(503, "unavailable", "the event log is not running")
    return found


def event_json(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at_ms),
        "at_ms": e.at_ms,
        "type": e.type,
        "device_id": e.device_id,
        "data": e.data,
    }


def bounds_json(b: LogBounds) -> dict[str, Any]:
    return {
        "first_id": b.first_id,
        "last_id": b.last_id,
        "kept": b.kept,
        "pruned_through": b.pruned_through,
        "deleted_unconfirmed": b.deleted_unconfirmed,
    }


def consumer_json(c: Consumer, last_id: int) -> dict[str, Any]:
    return {
        "name": c.name,
        "acked": c.cursor,
        "lag": max(0, last_id - c.cursor),
        "dropped": c.dropped,
        "created_at": iso(c.created_ms),
        "updated_at": iso(c.updated_ms),
    }


def _types(types: str | None) -> list[str] | None:
    if not types:
        return None
    wanted = [t.strip() for t in types.split(",") if t.strip()]
    bad = [t for t in wanted if t not in EVENT_TYPES]
    if bad:
        raise ApiError(
            422, "invalid", f"unknown event type {', '.join(bad)}; valid: {', '.join(EVENT_TYPES)}"
        )
    return wanted


def _missed(page: EventPage) -> dict[str, Any] | None:
    if not page.missed_through:
        return None
    return {
        "after": page.after,
        "through": page.missed_through,
        "reason": "deleted by retention before this reader got them",
    }


TypesQuery = Annotated[str | None, Query(description=f"comma-separated: {', '.join(EVENT_TYPES)}")]


@router.get("/events")
async def read_events(
    svc: SvcDep,
    after: Annotated[
        int, Query(ge=0, le=INT64_MAX, description="return events with id > after")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    types: TypesQuery = None,
) -> dict[str, Any]:
    """Events after a cursor, oldest first. Pass `next_after` back as `after` to continue."""
    page = await events_of(svc).read(after, limit, _types(types))
    return {
        "events": [event_json(e) for e in page.events],
        "count": len(page.events),
        "next_after": page.next_after,
        "missed": _missed(page),
        "log": bounds_json(page.bounds),
    }


def _sse(event: str | None, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    kind = f"event: {event}\n" if event else ""
    return f"{head}{kind}data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _stream(
    events: EventService, after: int, types: list[str] | None, keepalive_s: float
) -> AsyncIterator[str]:
    yield f"retry: 2000\n: connected, streaming events after {after}\n\n"
    loop_time = asyncio.get_running_loop().time
    last_write = loop_time()
    while True:
        seen = events.generation
        page = await events.read(after, STREAM_BATCH, types)
        missed = _missed(page)
        if missed is not None:
            yield _sse("gap", missed)
        if page.events:
            yield "".join(_sse(e.type, event_json(e), e.id) for e in page.events)
            last_write = loop_time()
        after = page.next_after
        if len(page.events) == STREAM_BATCH:
            continue
        if loop_time() - last_write >= keepalive_s:
            yield ": keep-alive\n\n"
            last_write = loop_time()
        await events.wait_new(seen, min(1.0, keepalive_s))


@router.get("/events/stream", response_class=StreamingResponse)
async def stream_events(
    svc: SvcDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="start after this id")
    ] = None,
    consumer: Annotated[
        str | None, Query(description="start after this consumer's confirmed cursor")
    ] = None,
    types: TypesQuery = None,
) -> StreamingResponse:
    """Server-Sent Events: `id:` is the event id, `event:` its type, `data:` the JSON.

    Start: `Last-Event-ID` (a reconnecting EventSource sends it), else `after`, else
    the consumer's cursor, else the newest event (only what comes next).
    Comments (`: keep-alive`) keep idle connections open.
    """
    service = events_of(svc)
    wanted = _types(types)
    start: int
    if last_event_id is not None and last_event_id.strip():
        try:
            start = int(last_event_id)
        except ValueError:
            start = -1
        if not 0 <= start <= INT64_MAX:
            raise ApiError(422, "invalid", "Last-Event-ID must be an event id") from None
    elif after is not None:
        start = after
    elif consumer is not None:
        c = await service.consumer(consumer)
        if c is None:
            raise ApiError(404, "unknown_consumer", f"no consumer named {consumer!r}")
        start = c.cursor
    else:
        start = (await service.bounds()).last_id
    return StreamingResponse(
        _stream(service, start, wanted, service.settings.sse_keepalive_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/consumers")
async def list_consumers(svc: SvcDep) -> dict[str, Any]:
    """Every named consumer with its cursor, lag and drops, and the log's bounds."""
    service = events_of(svc)
    bounds = await service.bounds()
    found = await service.consumers()
    return {
        "consumers": [consumer_json(c, bounds.last_id) for c in found],
        "log": bounds_json(bounds),
    }


@router.get("/consumers/{name}")
async def get_consumer(name: str, svc: SvcDep) -> dict[str, Any]:
    service = events_of(svc)
    c = await service.consumer(name)
    if c is None:
        raise ApiError(404, "unknown_consumer", f"no consumer named {name!r}")
    return consumer_json(c, (await service.bounds()).last_id)


@router.put("/consumers/{name}/cursor", dependencies=[Writer])
async def confirm(name: str, body: CursorBody, svc: SvcDep) -> dict[str, Any]:
    """Confirm everything up to `acked`: the consumer is registered on first use, and
    events stay until every consumer has confirmed them (or retention drops them)."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ApiError(
            422,
            "invalid",
            "consumer name: 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
        )
    service = events_of(svc)
    try:
        c = await service.confirm(name, body.acked)
    except CursorError as exc:
        raise ApiError(409 if "forward" in str(exc) else 422, "invalid_cursor", str(exc)) from None
    return consumer_json(c, (await service.bounds()).last_id)


@router.delete("/consumers/{name}", status_code=204, dependencies=[Writer])
async def delete_consumer(name: str, svc: SvcDep, audit: AuditDep) -> Response:
    """Forget a consumer: retention no longer waits for it."""
    if not await events_of(svc).remove_consumer(name):
        raise ApiError(404, "unknown_consumer", f"no consumer named {name!r}")
    await audit("consumer.deleted", consumer=name)
    return Response(status_code=204)
