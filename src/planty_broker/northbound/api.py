"""The HTTP API (FastAPI): app factory, authentication, health.

Every route under /api/v1 needs `Authorization: Bearer <token>`; only
`/healthz` is open. OpenAPI at /openapi.json, interactive docs at /docs.
Feature routers (devices, commands, events, ...) are included from their own
modules so this file stays the composition point.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from planty_broker import __version__
from planty_broker.northbound.auth import Authenticator, Principal, Scope
from planty_broker.northbound.errors import ApiError, install_error_handlers
from planty_broker.services.context import Services

_bearer = HTTPBearer(auto_error=False, description="An API token (admin, server or read scope)")


async def services(request: Request) -> Services:
    """The composed services (async: a sync dependency would cost a thread hop per request)."""
    svc: Services = request.app.state.services
    return svc


async def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Authenticate the caller; `read` tokens may only GET."""
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise ApiError(
            401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'"
        )
    auth: Authenticator = request.app.state.authenticator
    who = await auth.authenticate(creds.credentials)
    if who is None:
        raise ApiError(401, "unauthorized", "invalid or revoked token")
    if who.scope is Scope.READ and request.method not in ("GET", "HEAD", "OPTIONS"):
        raise ApiError(403, "forbidden", "this token has the 'read' scope: it may only GET")
    return who


def require_scope(*allowed: Scope) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """Dependency: the caller's scope must be one of `allowed` (admin always passes)."""

    async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.scope is Scope.ADMIN or who.scope in allowed:
            return who
        raise ApiError(
            403,
            "forbidden",
            f"this token has the '{who.scope.value}' scope; "
            f"needs one of: admin, {', '.join(s.value for s in allowed)}",
        )

    return check


SvcDep = Annotated[Services, Depends(services)]
AuthDep = Annotated[Principal, Depends(principal)]


def create_api(
    svc: Services, authenticator: Authenticator, routers: list[APIRouter] | None = None
) -> FastAPI:
    """Build the FastAPI app over the composed services."""
    from planty_broker.northbound.routes_devices import router as devices_router

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

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        """Liveness without authentication: is the gateway up, is the MQTT link connected."""
        link = svc.extra.get("link")
        return {
            "status": "ok",
            "version": __version__,
            "mqtt_connected": bool(getattr(link, "connected", False)),
        }

    app.include_router(devices_router, prefix="/api/v1", dependencies=[Depends(principal)])
    from planty_broker.northbound.routes_stats import router as stats_router

    app.include_router(stats_router, prefix="/api/v1", dependencies=[Depends(principal)])
    from planty_broker.northbound.routes_commands import router as commands_router
    from planty_broker.northbound.routes_events import router as events_router

    for queue_router in (commands_router, events_router):
        app.include_router(queue_router, prefix="/api/v1", dependencies=[Depends(principal)])
    from planty_broker.northbound.routes_rules import router as rules_router

    app.include_router(rules_router, prefix="/api/v1", dependencies=[Depends(principal)])
    from planty_broker.northbound.routes_credentials import router as credentials_router
    from planty_broker.northbound.routes_pairing import public_router as pairing_claim_router
    from planty_broker.northbound.routes_pairing import router as pairing_router
    from planty_broker.northbound.routes_tokens import router as tokens_router

    for identity_router in (tokens_router, pairing_router, credentials_router):
        app.include_router(identity_router, prefix="/api/v1", dependencies=[Depends(principal)])
    # POST /pairing/claim: no bearer token, the pairing code is its secret (rate-limited).
    app.include_router(pairing_claim_router, prefix="/api/v1")
    if svc.settings.metrics.enabled:
        from planty_broker.northbound.metrics import install_metrics

        install_metrics(app, svc, [principal] if svc.settings.metrics.require_token else [])
    if svc.settings.dashboard.enabled:
        from planty_broker.northbound.dashboard import install_dashboard

        install_dashboard(app)
    for r in routers or []:
        app.include_router(r, prefix="/api/v1", dependencies=[Depends(principal)])
    return app
