"""What every API route depends on: the composed services and the authenticated caller.

Routers import these; `app.py` (which includes the routers) is never imported by them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from planty_broker.northbound.api.auth import Authenticator, Principal, Scope
from planty_broker.northbound.api.errors import ApiError
from planty_broker.services.access.audit import Actor, AuditLog
from planty_broker.services.access.limits import client_key
from planty_broker.services.context import Services

_bearer = HTTPBearer(auto_error=False, description="An API token (admin, server or read scope)")


async def services(request: Request) -> Services:
    """The composed services (async: a sync dependency would cost a thread hop per request)."""
    svc: Services = request.app.state.services
    return svc


_CLIENT_HEADER = "x-planty-client"  # set by a forwarding worker (forward.py)
_CLIENT_CHARS = frozenset("0123456789abcdefABCDEF.:?")


def client_address(request: Request) -> str:
    """The caller's address (behind a proxy on this host: from X-Forwarded-For, by uvicorn).
    In scale-out, a request a worker forwarded is "<worker>><caller>" (see forward.py)."""
    peer = request.client.host if request.client else "?"
    named = request.headers.get(_CLIENT_HEADER)
    if named is None or not request.app.state.services.settings.cluster.engine:
        return peer
    if len(named) > 64 or not set(named) <= _CLIENT_CHARS:
        named = "?"
    return f"{peer}>{named}"


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
        client = client_key(client_address(request))
        retry = auth.failures.retry_after(client)
        auth.failures.failed(client)
        if retry is not None:
            auth.rate_limited += 1
            raise ApiError(
                429,
                "rate_limited",
                f"too many invalid tokens from this address; try again in {retry:.0f} s",
                retry_after_s=round(retry),
            )
        auth.refused += 1
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


class Audit:
    """Records the caller's admin actions (`audit` events): `await audit("device.removed",
    device_id=..., ...)` after the action took effect."""

    def __init__(self, log: AuditLog | None, actor: Actor) -> None:
        self._log = log
        self.actor = actor

    async def __call__(self, action: str, *, device_id: str | None = None, **details: Any) -> None:
        if self._log is not None:
            await self._log.record(self.actor, action, device_id=device_id, **details)


def actor_of(who: Principal, request: Request) -> Actor:
    return Actor(who.name or who.token_id, who.token_id, client_address(request))


async def auditor(request: Request, who: Annotated[Principal, Depends(principal)]) -> Audit:
    svc: Services = request.app.state.services
    return Audit(svc.audit, actor_of(who, request))


SvcDep = Annotated[Services, Depends(services)]
AuthDep = Annotated[Principal, Depends(principal)]
AuditDep = Annotated[Audit, Depends(auditor)]
