"""Command routes: send (optionally waiting for the outcome), follow, list, cancel, read now.

Errors: unknown device 404, action not valid for the device 422 (with the valid
ones), bad args or ttl 422, queue full 429, id reused 409, cancel after send 409.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from planty_broker.domain.commands import (
    CommandError,
    CommandRecord,
    CommandState,
    CommandTransition,
    InvalidActionError,
)
from planty_broker.domain.stats.counters import latency_summary, parse_window
from planty_broker.northbound.api.auth import Scope
from planty_broker.northbound.api.deps import SvcDep, require_scope
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.limits import MAX_SECONDS
from planty_broker.northbound.api.timefmt import iso
from planty_broker.services.commands.service import (
    CommandConflictError,
    CommandNotFoundError,
    CommandService,
    NotCancellableError,
    QueueFullError,
)
from planty_broker.services.context import Services
from planty_broker.services.registry import UnknownDeviceError, now_ms

router = APIRouter(tags=["commands"])
_encode = msgspec.json.Encoder().encode
Writer = Depends(require_scope(Scope.SERVER))
MAX_WAIT_S = 300.0


class NewCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(
        min_length=1, max_length=128, description="e.g. pump.on, lamp.set, read, ping, config"
    )
    args: dict[str, Any] = Field(default_factory=dict, examples=[{"seconds": 30}])
    ttl_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS,
        description="deadline from now, s (default commands.default_ttl_s)",
    )
    wait_s: float = Field(
        default=0, ge=0, le=MAX_WAIT_S, description="answer once final, or after this long"
    )
    id: str | None = Field(
        default=None, description="your own id, to submit idempotently (3-64 of A-Za-z0-9-_.:)"
    )


class ReadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wait_s: float | None = Field(default=None, gt=0, le=MAX_WAIT_S)


def commands_of(svc: Services) -> CommandService:
    found = svc.commands
    if not isinstance(found, CommandService):
        detail = (
            "this instance does not hold the lease: send commands through the leader "
            "(GET /healthz says role: leader)"
            if svc.role == "worker"
            else "the command service is not running"
        )
        raise ApiError(503, "unavailable", detail)
    return found


def transition_json(t: CommandTransition) -> dict[str, Any]:
    return {"state": t.state, "at": iso(t.at_ms), "attempt": t.attempt, "detail": t.detail}


def command_json(
    r: CommandRecord, history: list[CommandTransition] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": r.id,
        "device_id": r.device_id,
        "action": r.action,
        "args": r.args,
        "origin": r.origin,
        "state": r.state.value,
        "final": r.final,
        "created_at": iso(r.created_ms),
        "expires_at": iso(r.exp_ms),
        "updated_at": iso(r.updated_ms),
        "attempts": r.attempts,
        "sent_at": iso(r.sent_ms),
        "last_sent_at": iso(r.last_sent_ms),
        "final_at": iso(r.final_ms),
        "result": r.result,
        "error": r.error,
        "superseded_by": r.superseded_by,
        "rtt_ms": r.rtt_ms,
    }
    if r.late_ack is not None:
        out["late_ack"] = r.late_ack
    if history is not None:
        out["history"] = [transition_json(t) for t in history]
    return out


def _states(state: list[str] | None) -> list[str] | None:
    if not state:
        return None
    wanted = [s.strip() for part in state for s in part.split(",") if s.strip()]
    valid = [s.value for s in CommandState]
    bad = [s for s in wanted if s not in valid]
    if bad:
        raise ApiError(422, "invalid", f"unknown state {', '.join(bad)}; valid: {', '.join(valid)}")
    return wanted


def _command_error(exc: Exception) -> ApiError:
    if isinstance(exc, UnknownDeviceError):
        return ApiError(404, "unknown_device", str(exc))
    if isinstance(exc, InvalidActionError):
        return ApiError(422, "invalid_action", str(exc), valid_actions=exc.valid)
    if isinstance(exc, QueueFullError):
        return ApiError(429, "queue_full", str(exc))
    if isinstance(exc, CommandConflictError | NotCancellableError):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, CommandNotFoundError):
        return ApiError(404, "unknown_command", str(exc))
    return ApiError(422, "invalid_args", str(exc))


StateQuery = Annotated[
    list[str] | None, Query(description="only these states (repeat or comma-separate)")
]
LimitQuery = Annotated[int, Query(ge=1, le=1000)]


@router.post(
    "/devices/{device_id}/commands",
    status_code=202,
    dependencies=[Writer],
    responses={200: {"description": "final within wait_s"}, 202: {"description": "accepted"}},
)
async def send_command(device_id: str, body: NewCommand, svc: SvcDep) -> Response:
    """Queue a command (202). With `wait_s`, answer once it is final (200) or, when
    `wait_s` runs out first, with its state at that moment (202)."""
    service = commands_of(svc)
    try:
        rec = await service.submit(
            device_id,
            body.action,
            body.args,
            ttl_s=body.ttl_s,
            wait_s=body.wait_s,
            command_id=body.id,
        )
    except (UnknownDeviceError, CommandError) as exc:
        raise _command_error(exc) from None
    # The hot path: encoded here (msgspec) rather than by FastAPI's generic serializer.
    return Response(
        _encode(command_json(rec)), 200 if rec.final else 202, media_type="application/json"
    )


@router.get("/devices/{device_id}/commands")
async def device_commands(
    device_id: str, svc: SvcDep, state: StateQuery = None, limit: LimitQuery = 100
) -> dict[str, Any]:
    """A device's commands, newest first."""
    if svc.registry.get(device_id) is None:
        raise ApiError(404, "unknown_device", f"no device with id {device_id!r}")
    found = await commands_of(svc).find(device_id, _states(state), limit)
    return {
        "device_id": device_id,
        "count": len(found),
        "commands": [command_json(r) for r in found],
    }


@router.get("/commands")
async def all_commands(
    svc: SvcDep, state: StateQuery = None, limit: LimitQuery = 100
) -> dict[str, Any]:
    """Commands of every device, newest first (e.g. `?state=queued,sent` for the backlog)."""
    found = await commands_of(svc).find(None, _states(state), limit)
    return {"count": len(found), "commands": [command_json(r) for r in found]}


@router.get("/commands/{command_id}")
async def get_command(command_id: str, svc: SvcDep) -> dict[str, Any]:
    """One command with its history (every transition with its time)."""
    service = commands_of(svc)
    rec = await service.get(command_id)
    if rec is None:
        raise ApiError(404, "unknown_command", f"no command with id {command_id!r}")
    return command_json(rec, await service.history(command_id))


@router.delete("/commands/{command_id}", dependencies=[Writer])
async def cancel_command(command_id: str, svc: SvcDep) -> dict[str, Any]:
    """Cancel a command that was not sent yet (409 once it was)."""
    try:
        rec = await commands_of(svc).cancel(command_id)
    except CommandError as exc:
        raise _command_error(exc) from None
    return command_json(rec)


@router.post("/devices/{device_id}/read", dependencies=[Writer])
async def read_now(device_id: str, svc: SvcDep, body: ReadRequest | None = None) -> dict[str, Any]:
    """Ask the device for its readings now; they are also stored as telemetry (seq -1).

    504 when the device did not answer in time (the `read` stays queued or unacked and
    completes later), 502 when it answered with an error.
    """
    service = commands_of(svc)
    wait_s = body.wait_s if body is not None and body.wait_s else service.settings.read_wait_s
    ttl_s = max(wait_s, service.settings.ack_timeout_s)
    try:
        rec = await service.submit(device_id, "read", {}, ttl_s=ttl_s, wait_s=wait_s)
    except (UnknownDeviceError, CommandError) as exc:
        raise _command_error(exc) from None
    if not rec.final:
        raise ApiError(
            504,
            "device_timeout",
            f"device {device_id} did not answer within {wait_s:g} s "
            f"(command {rec.id} is {rec.state.value}; GET /api/v1/commands/{rec.id})",
            command=command_json(rec),
        )
    if rec.state is not CommandState.ACKED:
        raise ApiError(
            502,
            "device_error",
            f"read on {device_id} {rec.state.value}: {rec.error}",
            command=command_json(rec),
        )
    readings = (rec.result or {}).get("readings", {})
    return {
        "device_id": device_id,
        "at": iso(rec.final_ms),
        "readings": readings,
        "command": command_json(rec),
    }


@router.get("/devices/{device_id}/latency")
async def device_latency(
    device_id: str,
    svc: SvcDep,
    window: Annotated[str, Query(description="e.g. 5m, 1h, 24h, 7d")] = "1h",
) -> dict[str, Any]:
    """Round-trip latency (pings and command acks) over a sliding window: p50/p95/p99 in ms."""
    if svc.registry.get(device_id) is None:
        raise ApiError(404, "unknown_device", f"no device with id {device_id!r}")
    try:
        window_ms = parse_window(window)
    except ValueError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    summary = commands_of(svc).latency(device_id, window_ms)
    if summary is None:
        stats = svc.stats
        s = stats.device(device_id) if stats is not None else None
        if s is None:
            summary = {"window_ms": window_ms, "count": 0}
        else:
            summary = latency_summary(s.latency, window_ms, now_ms())
    return {"device_id": device_id, "window": window, **summary}
