"""The HTTP API (FastAPI): the app factory and health.

Every route under /api/v1 needs `Authorization: Bearer <token>`; only
`/healthz` and `POST /pairing/claim` are open. OpenAPI at /openapi.json,
interactive docs at /docs. Feature routers (devices, commands, events, ...) live
in their own modules and depend on `deps.py`; this file includes them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from planty_broker import __version__
from planty_broker.northbound.api import (
    audit,
    commands,
    credentials,
    dead_letters,
    devices,
    events,
    firmware,
    pairing,
    rules,
    stats,
    tokens,
)
from planty_broker.northbound.api.auth import Authenticator
from planty_broker.northbound.api.deps import principal
from planty_broker.northbound.api.errors import install_error_handlers
from planty_broker.northbound.api.forward import install_forwarding
from planty_broker.northbound.dashboard.pages import install_dashboard
from planty_broker.northbound.metrics import install_metrics
from planty_broker.services.context import Services


def create_api(
    svc: Services, authenticator: Authenticator, routers: list[APIRouter] | None = None
) -> FastAPI:
    """Build the FastAPI app over the composed services."""
    app = FastAPI(
        title="Planty Broker API",
        version=__version__,
        description="Northbound API of the Planty Broker gateway: devices, presence, telemetry.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = svc
    app.state.authenticator = authenticator
    install_error_handlers(app)
    if svc.settings.cluster.engine:  # one gateway (the default) has nothing to forward
        install_forwarding(app, svc)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        """Liveness without authentication: is the gateway up, is the MQTT link connected."""
        link = svc.link
        return {
            "status": "ok",
            "version": __version__,
            "mqtt_connected": bool(getattr(link, "connected", False)),
            "role": svc.role,
        }

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> Response:
        """A browser goes to the dashboard; anything else gets where things are."""
        dashboard = svc.settings.dashboard.enabled
        if dashboard and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/dashboard/", status_code=307)
        return JSONResponse(
            {
                "name": "Planty Broker",
                "version": __version__,
                "dashboard": "/dashboard/" if dashboard else None,
                "api": "/api/v1",
                "docs": "/docs",
                "health": "/healthz",
            }
        )

    @app.get(
        "/readyz",
        tags=["health"],
        responses={503: {"description": "not ready: `reasons` says why, one line per check"}},
    )
    async def readyz() -> JSONResponse:
        """Readiness without authentication (for orchestrators, docs/operations.md): 200 when
        the gateway does its job; 503 with `reasons` when the store has failed to commit for
        `health.store_failing_s`, ingest is stuck, the MQTT link is down or a background
        loop died. `warnings` lists what needs an operator without stopping the gateway (a
        certificate ending within 30 days)."""
        health = svc.health
        if health is None:
            return JSONResponse({"ready": True, "reasons": [], "checks": {}, "warnings": []})
        r = health.readiness()
        return JSONResponse(r.as_json(), 200 if r.ready else 503)

    protected = (
        devices.router,
        stats.router,
        commands.router,
        events.router,
        rules.router,
        tokens.router,
        pairing.router,
        credentials.router,
        firmware.router,
        dead_letters.router,
        audit.router,
    )
    for router in protected:
        app.include_router(router, prefix="/api/v1", dependencies=[Depends(principal)])
    # POST /pairing/claim: no bearer token, the pairing code is its secret (rate-limited).
    app.include_router(pairing.public_router, prefix="/api/v1")
    if svc.settings.metrics.enabled:
        install_metrics(app, svc, [principal] if svc.settings.metrics.require_token else [])
    if svc.settings.dashboard.enabled:
        install_dashboard(app)
    for r in routers or []:
        app.include_router(r, prefix="/api/v1", dependencies=[Depends(principal)])
    return app
