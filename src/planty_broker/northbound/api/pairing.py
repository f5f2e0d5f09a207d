"""Pairing routes: show the code, claim it (the one route without a bearer token), unpair."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from planty_broker.northbound.api.auth import Scope
from planty_broker.northbound.api.deps import (
    AuditDep,
    AuthDep,
    SvcDep,
    client_address,
    require_scope,
)
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.timefmt import iso
from planty_broker.services.access.pairing import (
    AlreadyPairedError,
    ExpiredCodeError,
    InvalidCodeError,
    NotPairedError,
    PairingError,
    PairingService,
    RateLimitedError,
)
from planty_broker.services.context import Services

router = APIRouter(tags=["pairing"])
# No bearer token on this router: the pairing code is the secret (and it is rate-limited).
public_router = APIRouter(tags=["pairing"])
Writer = Depends(require_scope(Scope.SERVER))


def pairing_of(svc: Services) -> PairingService:
    if svc.pairing is None:
        raise ApiError(503, "unavailable", "pairing is not available in this gateway")
    return svc.pairing


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=32, description="the pairing code, e.g. 7KQ3-M9XD")
    account_id: str = Field(min_length=1, max_length=200, description="the user's account")


@router.get("/pairing")
async def get_pairing(svc: SvcDep, who: AuthDep, audit: AuditDep) -> dict[str, Any]:
    """Paired or not; while not paired, the code and its expiry (the code: admin tokens only)."""
    st = await pairing_of(svc).status()
    out: dict[str, Any] = {
        "paired": st.pairing is not None,
        "broker_id": svc.broker_id,
        "failed_claims": st.failed_claims,
        "rate_limited": st.rate_limited,
    }
    if st.pairing is not None:
        out.update(
            account_id=st.pairing.account_id,
            paired_at=iso(st.pairing.paired_ms),
            token_id=st.pairing.token_id,
        )
    elif st.code is not None:
        if who.scope is Scope.ADMIN:
            out["code"] = st.code.display
            await audit("pairing.code_shown", expires_at=iso(st.code.expires_ms))
        out["expires_at"] = iso(st.code.expires_ms)
    return out


@public_router.post("/pairing/claim")
async def claim(body: Claim, request: Request, svc: SvcDep) -> dict[str, Any]:
    """Pair the broker with an account. The response holds the server's API token, once."""
    client = client_address(request)
    try:
        result = await pairing_of(svc).claim(body.code, body.account_id, client)
    except RateLimitedError as exc:
        raise ApiError(
            429, "rate_limited", str(exc), retry_after_s=round(exc.retry_after_s)
        ) from None
    except ExpiredCodeError as exc:
        raise ApiError(410, "code_expired", str(exc)) from None
    except InvalidCodeError as exc:
        raise ApiError(403, "invalid_code", str(exc)) from None
    except AlreadyPairedError as exc:
        raise ApiError(409, "already_paired", str(exc)) from None
    except PairingError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    return {
        "paired": True,
        "account_id": result.pairing.account_id,
        "broker_id": svc.broker_id,
        "paired_at": iso(result.pairing.paired_ms),
        "token_id": result.token.id,
        "scope": result.token.scope.value,
        "token": result.secret,
    }


@router.delete("/pairing", dependencies=[Writer])
async def unpair(svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """Undo the pairing; the server's API token stops working at once."""
    try:
        old = await pairing_of(svc).unpair()
    except NotPairedError as exc:
        raise ApiError(404, "not_paired", str(exc)) from None
    await audit("pairing.unpaired", account_id=old.account_id, revoked_token_id=old.token_id)
    return {"paired": False, "account_id": old.account_id, "revoked_token_id": old.token_id}
