"""API token routes (admin only): create (the secret shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from planty_broker.domain.identity import ApiToken
from planty_broker.northbound.api.auth import Principal, Scope, TokenLookup
from planty_broker.northbound.api.deps import AuditDep, SvcDep, require_scope
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.timefmt import iso
from planty_broker.services.access.tokens import TokenError, TokenService, UnknownTokenError
from planty_broker.services.context import Services

router = APIRouter(tags=["tokens"])
AdminOnly = Depends(require_scope())  # admin always passes; nobody else


def token_lookup(tokens: TokenService) -> TokenLookup:
    """An `Authenticator` lookup over the token service (digest -> Principal)."""

    async def lookup(digest: str) -> Principal | None:
        token = await tokens.lookup(digest)
        if token is None:
            return None
        return Principal(token.id, Scope(token.scope.value), token.name)

    return lookup


def tokens_of(svc: Services) -> TokenService:
    if svc.tokens is None:
        raise ApiError(503, "unavailable", "API tokens are not available in this gateway")
    return svc.tokens


def token_json(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "scope": t.scope.value,
        "origin": t.origin,
        "created_at": iso(t.created_ms),
        "last_used_at": iso(t.last_used_ms),
        "revoked_at": iso(t.revoked_ms),
    }


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, examples=["planty-server"])
    scope: Literal["admin", "server", "read"] = Field(
        description="admin: everything; server: devices, commands, events, rules; read: GET only"
    )


@router.get("/tokens", dependencies=[AdminOnly])
async def list_tokens(
    svc: SvcDep,
    include_revoked: Annotated[bool, Query(alias="all", description="revoked ones too")] = False,
) -> dict[str, Any]:
    """Every API token (never its secret), with its last use."""
    tokens = await tokens_of(svc).list(include_revoked)
    return {"tokens": [token_json(t) for t in tokens], "count": len(tokens)}


@router.post("/tokens", status_code=201, dependencies=[AdminOnly])
async def create_token(body: NewToken, svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """A new token. The response holds its secret, once: it is stored only as a hash."""
    try:
        token, secret = await tokens_of(svc).create(body.name, body.scope, origin="api")
    except TokenError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    await audit("token.created", token_id=token.id, name=token.name, scope=token.scope.value)
    return {**token_json(token), "token": secret}


@router.delete("/tokens/{token_id}", dependencies=[AdminOnly])
async def revoke_token(token_id: str, svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """Revoke a token: the next request with it gets 401."""
    try:
        token = await tokens_of(svc).revoke(token_id)
    except UnknownTokenError as exc:
        raise ApiError(404, "unknown_token", str(exc)) from None
    await audit("token.revoked", token_id=token.id, name=token.name, scope=token.scope.value)
    return token_json(token)
