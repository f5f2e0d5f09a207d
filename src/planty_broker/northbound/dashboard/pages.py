"""Dashboard routes: open page shells, and fragments behind the API's bearer token."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from planty_broker import __version__
from planty_broker.errors import StoreError
from planty_broker.northbound.api.deps import SvcDep, principal
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.dashboard import updates, views
from planty_broker.protocol import valid_device_id
from planty_broker.services.firmware.service import RolloutNotFoundError
from planty_broker.services.fleet_list import MAX_QUERY
from planty_broker.text import number

HERE = Path(__file__).parent
STATIC = HERE / "static"

router = APIRouter(include_in_schema=False)
fragments = APIRouter(prefix="/dashboard/fragments", dependencies=[Depends(principal)])

# Pages run only our own scripts; no framing, no referrer leaving the gateway.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _clock(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _num(value: float) -> str:
    return f"{value:g}"


def _state(state: str) -> str:
    """A presence state in words: `never_seen` reads "never seen"."""
    return state.replace("_", " ")


def _minutes(ms: int | float) -> str:
    return f"{ms / 60000:.1f} min"


env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(
    clock=_clock, pct=_pct, ms=_ms, num=_num, state=_state, minutes=_minutes, number=number
)
env.globals["version"] = __version__


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = env.get_template(name).render(**context)
    return HTMLResponse(html, status, headers=SECURITY_HEADERS)


# ---------------------------------------------------------------- pages (no data in them)


@router.get("/dashboard")
async def dashboard_root() -> RedirectResponse:
    return RedirectResponse("/dashboard/", status_code=307)


@router.get("/dashboard/")
async def fleet_page() -> HTMLResponse:
    return render("fleet.html", page="fleet")


@router.get("/dashboard/devices/{device_id}")
async def device_page(
    device_id: str, window: Annotated[str | None, Query()] = None
) -> HTMLResponse:
    if not valid_device_id(device_id):
        return render("missing.html", 404, page="missing", device_id=device_id)
    return render(
        "device.html",
        page="device",
        device_id=device_id,
        window=views.window_or_default(window),
        windows=views.WINDOWS,
    )


@router.get("/dashboard/rollouts")
async def rollouts_page() -> HTMLResponse:
    return render("rollouts.html", page="rollouts")


@router.get("/dashboard/rollouts/{rollout_id}")
async def rollout_page(rollout_id: int) -> HTMLResponse:
    return render("rollout.html", page="rollout", rollout_id=rollout_id)


# ---------------------------------------------------------------- fragments (token needed)


@fragments.get("/fleet")
async def fleet_fragment(
    svc: SvcDep,
    q: Annotated[str | None, Query(max_length=MAX_QUERY)] = None,
    state: Annotated[Literal["online", "offline", ""] | None, Query()] = None,
    after: Annotated[str | None, Query(max_length=100)] = None,
) -> HTMLResponse:
    """A page of the fleet table: `after` is the last device id of the page before
    (the form sends "" for "all devices" and for the first page)."""
    found = views.fleet(svc, q=q, state=state or None, after=after or None)
    return render("_fleet.html", q=q or "", **found)


@fragments.get("/row/{device_id}")
async def row_fragment(device_id: str, svc: SvcDep) -> HTMLResponse:
    d = svc.registry.get(device_id)
    if d is None:  # removed meanwhile: the row goes away
        return HTMLResponse("", headers=SECURITY_HEADERS)
    return render("_row.html", r=views.row(svc, d))


@fragments.get("/device/{device_id}")
async def device_fragment(
    device_id: str, svc: SvcDep, window: Annotated[str | None, Query()] = None
) -> HTMLResponse:
    d = svc.registry.get(device_id)
    if d is None:
        raise ApiError(404, "unknown_device", f"no device with id {device_id!r}")
    stats = svc.stats
    if stats is not None:
        await stats.ensure_loaded(device_id)
    return render("_device.html", **views.device_panel(svc, d, views.window_or_default(window)))


@fragments.get("/commands/{device_id}")
async def commands_fragment(device_id: str, svc: SvcDep) -> HTMLResponse:
    if device_id not in svc.registry:
        raise ApiError(404, "unknown_device", f"no device with id {device_id!r}")
    commands = await views.command_history(svc, device_id)
    return render("_commands.html", commands=commands)


@fragments.get("/updates/{device_id}")
async def updates_fragment(device_id: str, svc: SvcDep) -> HTMLResponse:
    if device_id not in svc.registry:
        raise ApiError(404, "unknown_device", f"no device with id {device_id!r}")
    return render("_updates.html", **await updates.device_updates(svc, device_id))


@fragments.get("/rollouts")
async def rollouts_fragment(svc: SvcDep) -> HTMLResponse:
    return render("_rollouts.html", **await updates.rollouts(svc))


@fragments.get("/rollouts/{rollout_id}")
async def rollout_fragment(rollout_id: int, svc: SvcDep) -> HTMLResponse:
    try:
        found = await updates.rollout(svc, rollout_id)
    except RolloutNotFoundError as exc:
        raise ApiError(404, "unknown_rollout", str(exc)) from None
    if found is None:
        raise ApiError(503, "unavailable", "this gateway does not send updates")
    return render("_rollout.html", **found)


@fragments.get("/attention")
async def attention_fragment(svc: SvcDep) -> HTMLResponse:
    """Readiness problems and dead letters (the newest few), above the fleet when any."""
    dead = svc.dead_letters
    try:
        newest = await dead.list(limit=5) if dead is not None and dead.total_held else []
    except StoreError:  # the store is down: the count alone
        newest = []
    health = svc.health.readiness() if svc.health is not None else None
    return render(
        "_attention.html",
        ready=health is None or health.ready,
        reasons=health.reasons if health is not None else [],
        dead=newest,
        dead_total=dead.total_held if dead is not None else 0,
    )


router.include_router(fragments)


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def install_dashboard(app: FastAPI) -> None:
    """Mount the static assets and add the page and fragment routes."""
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.include_router(router)
