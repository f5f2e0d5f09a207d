"""Device routes: register (credentials shown once), list, show, remove, telemetry."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planty_broker.domain.history import DAY_MS, HourlyRollup, hour_of
from planty_broker.domain.models import (
    DEVICE_PROFILES,
    MAX_DECLARED,
    DeviceRecord,
    PresenceState,
    Reading,
    check_declared,
)
from planty_broker.northbound.api.auth import Scope
from planty_broker.northbound.api.deps import AuditDep, SvcDep, require_scope
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.timefmt import iso, parse_time
from planty_broker.services.context import Services
from planty_broker.services.fleet_list import MAX_QUERY, FleetPage, select
from planty_broker.services.registry import (
    MAX_IMPORT,
    DeviceAlreadyExistsError,
    InvalidDeviceIdError,
    now_ms,
)
from planty_broker.services.registry import (
    NewDevice as ImportRow,
)

router = APIRouter(tags=["devices"])
Writer = Depends(require_scope(Scope.SERVER))


class NewDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(
        description="device id: 3-64 characters a-z, 0-9, '-'", examples=["greenhouse-1"]
    )
    name: str | None = Field(default=None, max_length=200)
    sensors: list[str] | None = Field(
        default=None,
        max_length=MAX_DECLARED,
        description="what the device has, before it first connects (its status replaces it)",
        examples=[["temperature", "soil_moisture"]],
    )
    actuators: list[str] | None = Field(
        default=None,
        max_length=MAX_DECLARED,
        description="its actuators: commands and rules for them are accepted before it first "
        "connects (its status replaces the list)",
        examples=[["pump", "lamp"]],
    )
    profile: str | None = Field(
        default=None,
        description=f"a named set of sensors and actuators: {', '.join(DEVICE_PROFILES)}; "
        "`sensors` or `actuators` given beside it win",
        examples=["pot"],
    )


class MqttEndpoint(BaseModel):
    host: str
    port: int
    tls: bool
    ca_pem: str | None
    prefix: str = Field(description="topic prefix: the device uses <prefix>/devices/<id>/...")
    endpoints: list[tuple[str, int]] | None = Field(
        default=None,
        description="a clustered MQTT server: every node as [host, port], host:port first; "
        "a device that cannot reach one tries the next (docs/scale-out.md)",
    )


class DeviceCredentials(BaseModel):
    id: str
    token: str = Field(description="the device's MQTT password; shown only in this response")
    mqtt: MqttEndpoint


def reading_json(r: Reading | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "seq": r.seq,
        "ts": iso(r.ts_ms),
        "received_at": iso(r.received_ms),
        "readings": r.values,
    }


def device_json(svc: Services, d: DeviceRecord) -> dict[str, Any]:
    p = svc.presence.get(d.id)
    stats = svc.stats
    c = stats.fleet.get(d.id) if stats is not None else None  # DeviceStats
    errors = {k: n for k, n in c.errors().items() if n} if c else {}
    state = p.state if p else PresenceState.UNKNOWN
    out: dict[str, Any] = {
        "id": d.id,
        "name": d.name,
        "created_at": iso(d.created_at_ms),
        "online": state in (PresenceState.ONLINE, PresenceState.LATE),
        "presence": {
            "state": state.value,
            "since": iso(p.since_ms) if p else None,
            "cause": p.cause.value if p else None,
        },
        # The device's own last message (a last will is the MQTT server speaking for it);
        # after a restart, until it speaks again, the last message counted before.
        "last_seen": iso(
            p.last_seen_ms if p and p.last_seen_ms else (c.last_message_ms if c else None)
        ),
        "latest": reading_json(svc.ingest.latest.get(d.id)),
        "counts": {
            "messages": c.msgs_in if c else 0,
            "bytes": c.bytes_in if c else 0,
            "readings": c.readings if c else 0,
            "errors": sum(errors.values()),
            "errors_by_kind": errors,
        },
        "sensors": list(d.sensors),
        "actuators": list(d.actuators),
        "fw": d.fw,
        "interval_s": d.interval_s,
    }
    if svc.stats is not None:
        out.update(svc.stats.device_summary(d.id))
    return out


def declared(body: NewDevice) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The sensors and actuators a registration declares (422 when a name is bad)."""
    sensors: tuple[str, ...] = ()
    actuators: tuple[str, ...] = ()
    if body.profile is not None:
        if body.profile not in DEVICE_PROFILES:
            raise ApiError(
                422,
                "unknown_profile",
                f"no profile {body.profile!r}; known: {', '.join(DEVICE_PROFILES)}",
            )
        sensors, actuators = DEVICE_PROFILES[body.profile]
    try:
        if body.sensors is not None:
            sensors = check_declared(body.sensors, "sensors")
        if body.actuators is not None:
            actuators = check_declared(body.actuators, "actuators")
    except ValueError as exc:
        raise ApiError(422, "invalid_declaration", str(exc)) from None
    return sensors, actuators


@router.get("/mqtt")
async def mqtt_endpoint(svc: SvcDep) -> dict[str, Any]:
    """Where devices connect and the CA certificate (PEM) MQTT clients must trust
    (`planty devices ca > ca.pem`)."""
    return {**mqtt_json(svc), "x509_port": svc.endpoint.x509_port or None}


def mqtt_json(svc: Services) -> dict[str, Any]:
    """Where a device connects, as POST /devices and the import return it."""
    e = svc.endpoint
    out: dict[str, Any] = {
        "host": e.host,
        "port": e.port,
        "tls": e.tls,
        "ca_pem": e.ca_pem,
        "prefix": svc.settings.mqtt.topic_prefix,
    }
    if e.endpoints:
        out["endpoints"] = [[host, port] for host, port in e.endpoints]
    return out


@router.post("/devices", status_code=201, response_model=DeviceCredentials, dependencies=[Writer])
async def add_device(
    body: NewDevice,
    svc: SvcDep,
    audit: AuditDep,
    wait: Annotated[
        bool,
        Query(
            description="answer once the MQTT server accepts the token (default); false: at "
            "once, the token works from the next reload (within about a second)"
        ),
    ] = True,
) -> dict[str, Any]:
    """Register a device. The response holds its token, once: store it on the device.

    `sensors` and `actuators` (or a `profile`) say what it has before it first
    connects, so commands and rules can be set at once; what it declares in its
    status replaces them (a difference is logged). Registrations reach the MQTT server
    in one reload per second at most, however many arrive: to register many devices,
    use POST /devices/import or `wait=false`. On a cluster `mqtt.endpoints` lists every
    node as `[host, port]`, host:port first (docs/scale-out.md)."""
    sensors, actuators = declared(body)
    try:
        record, token = await svc.registry.add(
            body.id, body.name, sensors=sensors, actuators=actuators, wait=wait
        )
    except InvalidDeviceIdError as exc:
        raise ApiError(422, "invalid_device_id", str(exc)) from None
    except DeviceAlreadyExistsError as exc:
        raise ApiError(409, "device_exists", f"{exc}; remove it first or pick another id") from None
    await audit("device.added", device_id=record.id, name=record.name)
    return {"id": record.id, "token": token, "mqtt": mqtt_json(svc)}


MAX_PAGE = 1000
_CURSOR_PREFIX = "d1:"


def encode_cursor(after: str) -> str:
    """An opaque cursor: the page continues after this device id."""
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + after).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The device id a cursor continues after; ValueError for anything we did not make."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("cursor is not one this API gave out") from None
    if not raw.startswith(_CURSOR_PREFIX) or len(raw) > 100:
        raise ValueError("cursor is not one this API gave out")
    after = raw[len(_CURSOR_PREFIX) :]
    if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in after):
        raise ValueError("cursor is not one this API gave out")
    return after


def presence_of(svc: Services) -> Callable[[str], PresenceState]:
    presence = svc.presence

    def state_of(device_id: str) -> PresenceState:
        p = presence.get(device_id)
        return p.state if p is not None else PresenceState.UNKNOWN

    return state_of


def fleet_page(
    svc: Services,
    *,
    q: str | None,
    state: Literal["online", "offline"] | None,
    cursor: str | None,
    limit: int,
) -> FleetPage:
    """One page of the fleet list (422 for a cursor we did not give out)."""
    try:
        after = decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise ApiError(422, "invalid_cursor", f"cursor: {exc}") from None
    return select(svc.registry, presence_of(svc), q=q, state=state, after=after, limit=limit)


@router.post("/devices/import", dependencies=[Writer])
async def import_devices(
    svc: SvcDep,
    audit: AuditDep,
    body: Annotated[
        list[Any],
        Body(
            max_length=MAX_IMPORT,
            description="rows as for POST /devices: id, and optionally name, sensors, "
            "actuators, profile",
            examples=[[{"id": "pot-0001", "name": "Kitchen basil"}, {"id": "pot-0002"}]],
        ),
    ],
) -> dict[str, Any]:
    """Register many devices at once (at most 10,000): one store write per 1,000 and one
    MQTT server reload for the whole batch, so 10,000 take seconds.

    Each row is checked on its own: the good ones are registered (their tokens are in
    `devices`, shown only in this response), the bad ones are listed in `errors` with
    their row number (0-based), a code and why, and change nothing. Every returned token
    works when the answer arrives."""
    rows: list[ImportRow] = []
    positions: list[int] = []  # the request's row number of each row in `rows`
    errors: list[dict[str, Any]] = []
    for n, raw in enumerate(body):
        if not isinstance(raw, dict):
            errors.append({"row": n, "id": None, "code": "invalid", "message": "not an object"})
            continue
        rid = raw.get("id") if isinstance(raw.get("id"), str) else None
        try:
            spec = NewDevice.model_validate(raw)
            sensors, actuators = declared(spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "row"
            errors.append(
                {"row": n, "id": rid, "code": "invalid", "message": f"{where}: {first['msg']}"}
            )
            continue
        except ApiError as exc:
            errors.append({"row": n, "id": rid, "code": exc.code, "message": exc.message})
            continue
        rows.append(ImportRow(spec.id, spec.name, sensors, actuators))
        positions.append(n)
    outcomes = await svc.registry.add_many(rows)
    devices = []
    for outcome in outcomes:
        row = positions[outcome.row]
        if outcome.token is not None:
            devices.append({"row": row, "id": outcome.id, "token": outcome.token})
        else:
            errors.append(
                {"row": row, "id": outcome.id, "code": outcome.error, "message": outcome.message}
            )
    errors.sort(key=lambda e: e["row"])
    if devices:
        ids = [d["id"] for d in devices]
        await audit("devices.imported", count=len(ids), ids=ids[:100])
    return {
        "imported": len(devices),
        "failed": len(errors),
        "devices": devices,
        "errors": errors,
        "mqtt": mqtt_json(svc),
    }


@router.get("/devices")
async def list_devices(
    svc: SvcDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE, description="devices per page (at most 1000)")
    ] = MAX_PAGE,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="`next_cursor` (or `prev_cursor`) of the page before"),
    ] = None,
    q: Annotated[
        str | None,
        Query(max_length=MAX_QUERY, description="only devices whose id or name contains this"),
    ] = None,
    state: Annotated[
        Literal["online", "offline"] | None,
        Query(description="only devices online (or late), or only the others"),
    ] = None,
) -> dict[str, Any]:
    """Registered devices with presence, last seen, latest readings and counts, a page at
    a time in id order: pass `next_cursor` back as `cursor` (with the same `q` and `state`)
    for the next page; it is null on the last. `count` and `online` cover every page.

    Devices added or removed meanwhile never shift a page (the cursor is a position in the
    id order, not an offset). Without `limit` a page holds up to 1000 devices, so a fleet
    of at most 1000 comes whole as before."""
    page = fleet_page(svc, q=q, state=state, cursor=cursor, limit=limit)
    return {
        "devices": [device_json(svc, d) for d in page.devices],
        "count": page.total,
        "online": page.online,
        "limit": limit,
        "next_cursor": encode_cursor(page.next_after) if page.next_after is not None else None,
        "prev_cursor": encode_cursor(page.prev_after or "") if page.has_prev else None,
    }


def _device(svc: Services, device_id: str) -> DeviceRecord:
    d = svc.registry.get(device_id)
    if d is None:
        raise ApiError(404, "unknown_device", f"no device with id {device_id!r}")
    return d


@router.get("/devices/{device_id}")
async def get_device(device_id: str, svc: SvcDep) -> dict[str, Any]:
    return device_json(svc, _device(svc, device_id))


@router.delete("/devices/{device_id}", status_code=204, dependencies=[Writer])
async def remove_device(device_id: str, svc: SvcDep, audit: AuditDep) -> Response:
    """Remove a device: its credentials stop working at once and its data is deleted."""
    _device(svc, device_id)
    await svc.registry.remove(device_id)
    await audit("device.removed", device_id=device_id)
    return Response(status_code=204)


@router.get("/devices/{device_id}/telemetry")
async def telemetry(
    device_id: str,
    svc: SvcDep,
    since: Annotated[str | None, Query(description="ISO 8601 or unix ms, inclusive")] = None,
    until: Annotated[str | None, Query(description="ISO 8601 or unix ms, inclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Stored readings of one device, oldest first (the newest `limit` in the range)."""
    _device(svc, device_id)
    try:
        since_ms, until_ms = parse_time(since, "since"), parse_time(until, "until")
    except ValueError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    rows = await svc.store.query_readings(device_id, since_ms, until_ms, limit)
    return {"device_id": device_id, "count": len(rows), "readings": [reading_json(r) for r in rows]}


def hours_json(rollups: list[HourlyRollup]) -> list[dict[str, Any]]:
    """Rollups (ordered by hour, then sensor) as one entry per hour."""
    out: list[dict[str, Any]] = []
    for r in rollups:
        if not out or out[-1]["hour_ms"] != r.hour_ms:
            out.append({"hour": iso(r.hour_ms), "hour_ms": r.hour_ms, "readings": {}})
        out[-1]["readings"][r.sensor] = {
            "count": r.count,
            "min": r.min,
            "max": r.max,
            "avg": r.avg,
            "last": r.last,
        }
    return out


@router.get("/devices/{device_id}/telemetry/hourly")
async def telemetry_hourly(
    device_id: str,
    svc: SvcDep,
    since: Annotated[
        str | None, Query(description="ISO 8601 or unix ms (default: 30 days ago)")
    ] = None,
    until: Annotated[str | None, Query(description="ISO 8601 or unix ms, inclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=20_000, description="the newest hours")] = 24 * 31,
) -> dict[str, Any]:
    """Hourly rollups of one device (count, min, max, avg, last per sensor), oldest first.

    Kept `store.rollups_keep_days` (years), long after the raw readings are gone; the
    current hour is filled in as its readings are rolled up (within about two minutes).
    """
    _device(svc, device_id)
    try:
        since_ms, until_ms = parse_time(since, "since"), parse_time(until, "until")
    except ValueError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    if since_ms is None:
        since_ms = now_ms() - 30 * DAY_MS
    history = svc.history
    if history is None:
        raise ApiError(503, "unavailable", "long-term history is not running on this gateway")
    rows = await history.hourly(device_id, hour_of(since_ms), until_ms, limit)
    hours = hours_json(rows)
    return {"device_id": device_id, "resolution": "hour", "count": len(hours), "hours": hours}
