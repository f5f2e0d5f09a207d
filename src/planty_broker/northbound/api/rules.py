"""Rule routes: `set_thresholds` per device, rule CRUD, and each rule's history ("why?").

Errors: a rule that cannot work 422 (`error.reasons` lists every problem, e.g. an
unknown reading or an actuator the device does not have), unknown device or rule
404, POST of an existing id 409, the rules switched off 503.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Response

from planty_broker.domain.rules.model import RuleError
from planty_broker.domain.rules.records import RuleEvent
from planty_broker.errors import StoreError
from planty_broker.northbound.api.auth import Scope
from planty_broker.northbound.api.deps import AuditDep, SvcDep, require_scope
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.limits import INT64_MAX
from planty_broker.northbound.api.timefmt import iso, parse_time
from planty_broker.services.context import Services
from planty_broker.services.registry import UnknownDeviceError, now_ms
from planty_broker.services.rules.info import RuleInfo
from planty_broker.services.rules.service import RuleExistsError, RulesService

router = APIRouter(tags=["rules"])
Writer = Depends(require_scope(Scope.SERVER))
JsonObject = Annotated[dict[str, Any], Body(examples=[{"soil_moisture": {"min": 0.3}}])]
RuleBody = Annotated[
    dict[str, Any],
    Body(
        examples=[
            {
                "id": "water-basil",
                "devices": "dev-basil",
                "reading": "soil_moisture",
                "op": "<",
                "threshold": 0.3,
                "rearm": 0.4,
                "action": "pump.on",
                "args": {"seconds": 20},
                "cooldown_s": 1800,
                "max_fires_per_day": 5,
                "max_seconds_per_day": 120,
            }
        ]
    ),
]


def rules_of(svc: Services) -> RulesService:
    found = svc.rules
    if not isinstance(found, RulesService):
        raise ApiError(503, "unavailable", "the rules service is not running ([rules] enabled)")
    return found


def _refused(exc: RuleError) -> ApiError:
    return ApiError(
        422,
        "invalid_rule",
        "the rule cannot work: " + "; ".join(exc.reasons),
        reasons=list(exc.reasons),
    )


def _unavailable(exc: StoreError) -> ApiError:
    return ApiError(503, "store_unavailable", f"the rule was not saved: {exc}")


def _unknown_rule(rule_id: str) -> ApiError:
    return ApiError(404, "unknown_rule", f"no rule with id {rule_id!r}")


def state_json(info: RuleInfo, service: RulesService) -> list[dict[str, Any]]:
    """Each device's live state of one rule: armed, last fire, today's budget, manual hold."""
    rule, now = info.rule, now_ms()
    today = rule.clock.local(now)[0]
    out = []
    for device_id, st in sorted(service.states(rule.id).items()):
        current = st.day == today
        out.append(
            {
                "device_id": device_id,
                "armed": st.armed,
                "last_fire_at": iso(st.last_fire_ms),
                "fires_today": st.fires_today if current else 0,
                "seconds_today": st.seconds_today if current else 0.0,
                "held_until": iso(st.manual_hold_until_ms)
                if st.manual_hold_until_ms > now
                else None,
                "last_reading_at": iso(st.last_seen_ms),
                "suppressed_by": st.run_reason.value if st.run_reason is not None else None,
            }
        )
    return out


def rule_json(info: RuleInfo, service: RulesService | None = None) -> dict[str, Any]:
    out = info.to_dict()
    out["created_at"] = iso(out.pop("created_ms"))
    out["updated_at"] = iso(out.pop("updated_ms"))
    if service is not None:
        out["states"] = state_json(info, service)
    return out


async def event_json(e: RuleEvent, svc: Services) -> dict[str, Any]:
    """One history line; a fire names its command and where that command is now."""
    out: dict[str, Any] = {"id": e.id, "at": iso(e.at_ms), **e.data}
    ts = out.get("reading_ts_ms")
    out["reading_at"] = iso(ts) if isinstance(ts, int) else None
    cid = out.get("command_id")
    commands = svc.commands
    if isinstance(cid, str) and commands is not None:
        rec = await commands.get(cid)
        if rec is not None:
            out["command"] = {
                "id": rec.id,
                "state": rec.state.value,
                "sent_at": iso(rec.sent_ms),
                "final_at": iso(rec.final_ms),
                "result": rec.result,
                "error": rec.error,
            }
    return out


def _thresholds_json(service: RulesService, device_id: str) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "thresholds": service.thresholds(device_id),
        "rules": [rule_json(i) for i in service.threshold_rules(device_id)],
    }


# ---------------------------------------------------------------- set_thresholds


@router.get("/devices/{device_id}/thresholds")
async def get_thresholds(device_id: str, svc: SvcDep) -> dict[str, Any]:
    """The device's thresholds (`{"soil_moisture": {"min": 0.3}}`) and the rules they made."""
    service = rules_of(svc)
    try:
        return _thresholds_json(service, device_id)
    except UnknownDeviceError as exc:
        raise ApiError(404, "unknown_device", str(exc)) from None


@router.put("/devices/{device_id}/thresholds", dependencies=[Writer])
async def put_thresholds(
    device_id: str, body: JsonObject, svc: SvcDep, audit: AuditDep
) -> dict[str, Any]:
    """`set_thresholds`: `{"temperature": {"max": 30}, "soil_moisture": {"min": 0.3},
    "light": {"min": 200}}` become rules (docs/rules.md); a reading left out loses its
    threshold rules, `{}` clears them all. Acts on the next reading."""
    service = rules_of(svc)
    try:
        await service.set_thresholds(device_id, body)
    except UnknownDeviceError as exc:
        raise ApiError(404, "unknown_device", str(exc)) from None
    except RuleError as exc:
        raise _refused(exc) from None
    except StoreError as exc:
        raise _unavailable(exc) from None
    await audit("thresholds.set", device_id=device_id, readings=sorted(body))
    return _thresholds_json(service, device_id)


# ---------------------------------------------------------------- CRUD


@router.get("/rules")
async def list_rules(
    svc: SvcDep,
    device: Annotated[str | None, Query(description="only rules watching this device")] = None,
) -> dict[str, Any]:
    """Every rule (or those of one device, its groups and `"*"` included), by id."""
    service = rules_of(svc)
    found = service.rules(device)
    return {
        "count": len(found),
        "time_zone": service.tz,
        "rules": [rule_json(i) for i in found],
        "counts": dict(service.engine.counts),
        "unusable": service.unusable,
    }


@router.post("/rules", status_code=201, dependencies=[Writer])
async def create_rule(body: RuleBody, svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """Add a rule (201); without `id` one is made. 409 if the id exists (PUT replaces)."""
    service = rules_of(svc)
    data = dict(body)
    data.setdefault("id", f"rule-{uuid.uuid4().hex[:10]}")
    try:
        info = await service.put_rule(data, create=True)
    except RuleExistsError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except RuleError as exc:
        raise _refused(exc) from None
    except StoreError as exc:
        raise _unavailable(exc) from None
    await audit("rule.created", rule_id=data["id"])
    return rule_json(info, service)


@router.get("/rules/{rule_id}")
async def get_rule(rule_id: str, svc: SvcDep) -> dict[str, Any]:
    """One rule and its live state per device (armed, last fire, today's budget, hold)."""
    service = rules_of(svc)
    info = service.get(rule_id)
    if info is None:
        raise _unknown_rule(rule_id)
    return rule_json(info, service)


@router.put("/rules/{rule_id}", dependencies=[Writer])
async def put_rule(
    rule_id: str, body: RuleBody, svc: SvcDep, response: Response, audit: AuditDep
) -> dict[str, Any]:
    """Add (201) or replace (200) a rule; budget, cooldown and hold carry over a replace."""
    service = rules_of(svc)
    if body.get("id", rule_id) != rule_id:
        raise ApiError(422, "invalid_rule", f"body id {body['id']!r} differs from {rule_id!r}")
    existed = service.get(rule_id) is not None
    try:
        info = await service.put_rule({**body, "id": rule_id})
    except RuleError as exc:
        raise _refused(exc) from None
    except StoreError as exc:
        raise _unavailable(exc) from None
    response.status_code = 200 if existed else 201
    await audit("rule.replaced" if existed else "rule.created", rule_id=rule_id)
    return rule_json(info, service)


@router.patch("/rules/{rule_id}", dependencies=[Writer])
async def patch_rule(
    rule_id: str, body: JsonObject, svc: SvcDep, audit: AuditDep
) -> dict[str, Any]:
    """Change some fields, e.g. `{"enabled": false}` or `{"threshold": 0.25}`."""
    service = rules_of(svc)
    if service.get(rule_id) is None:
        raise _unknown_rule(rule_id)
    try:
        info = await service.patch_rule(rule_id, body)
    except RuleError as exc:
        raise _refused(exc) from None
    except StoreError as exc:
        raise _unavailable(exc) from None
    await audit("rule.changed", rule_id=rule_id, fields=sorted(body))
    return rule_json(info, service)


@router.delete("/rules/{rule_id}", status_code=204, dependencies=[Writer])
async def delete_rule(rule_id: str, svc: SvcDep, audit: AuditDep) -> Response:
    """Delete a rule; its history stays readable until `rules.history_keep_days`."""
    try:
        deleted = await rules_of(svc).delete_rule(rule_id)
    except StoreError as exc:
        raise _unavailable(exc) from None
    if not deleted:
        raise _unknown_rule(rule_id)
    await audit("rule.deleted", rule_id=rule_id)
    return Response(status_code=204)


@router.get("/rules/{rule_id}/history")
async def rule_history(
    rule_id: str,
    svc: SvcDep,
    device: Annotated[str | None, Query(description="only this device")] = None,
    since: Annotated[str | None, Query(description="ISO 8601 or unix ms, inclusive")] = None,
    until: Annotated[str | None, Query(description="ISO 8601 or unix ms, inclusive")] = None,
    before: Annotated[
        int | None, Query(ge=1, le=INT64_MAX, description="page back: ids below this")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Why did the pump run at 03:12? Every fire, every first suppression (cooldown,
    budget, stale, override, outside_window), silent-sensor warnings, manual holds and
    rule changes, newest first, each with the reading that caused it."""
    service = rules_of(svc)
    try:
        since_ms, until_ms = parse_time(since, "since"), parse_time(until, "until")
    except ValueError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    found = await service.history(
        rule_id,
        device_id=device,
        since_ms=since_ms,
        until_ms=until_ms,
        before_id=before,
        limit=limit,
    )
    filtered = any(x is not None for x in (device, since, until, before))
    if not found and not filtered and service.get(rule_id) is None:
        raise _unknown_rule(rule_id)
    return {
        "rule_id": rule_id,
        "count": len(found),
        "events": [await event_json(e, svc) for e in found],
        "next_before": found[-1].id if len(found) == limit else None,
    }
