"""Device credential routes: issue a certificate, rotate, revoke, history; the claim window."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from planty_broker import errors
from planty_broker.domain.identity import CredentialKind, DeviceCredential
from planty_broker.errors import MqttServerError, StoreError
from planty_broker.northbound.api.auth import Scope
from planty_broker.northbound.api.deps import AuditDep, SvcDep, require_scope
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.limits import MAX_SECONDS
from planty_broker.northbound.api.timefmt import iso
from planty_broker.protocol import CLAIM_SLOT_PREFIX
from planty_broker.services.context import Services
from planty_broker.services.credentials.events import CredentialEvent
from planty_broker.services.credentials.provisioning import (
    MAX_CLAIMS_LIMIT,
    ProvisioningError,
    ProvisioningService,
)
from planty_broker.services.credentials.service import (
    CredentialError,
    CredentialService,
    CredentialUnavailableError,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["credentials"])
Writer = Depends(require_scope(Scope.SERVER))
AdminOnly = Depends(require_scope())


def _unavailable() -> ApiError:
    return ApiError(503, "unavailable", "device credentials are not available in this gateway")


def credentials_of(svc: Services) -> CredentialService:
    if svc.credentials is None:
        raise _unavailable()
    return svc.credentials


def provisioning_of(svc: Services) -> ProvisioningService:
    if svc.provisioning is None:
        raise _unavailable()
    return svc.provisioning


def _device(svc: Services, device_id: str) -> None:
    if svc.registry.get(device_id) is None:
        raise ApiError(404, "unknown_device", f"no device with id {device_id!r}")


def credential_json(c: DeviceCredential) -> dict[str, Any]:
    return {
        "id": c.id,
        "type": c.kind.value,
        "state": c.state.value,
        "origin": c.origin.value,
        "created_at": iso(c.created_ms),
        "valid_from": iso(c.valid_from_ms),
        "first_used_at": iso(c.first_used_ms),
        "ended_at": iso(c.ended_ms),
        "end_reason": c.end_reason,
        "replaces": c.replaces,
        "overlap_until": iso(c.overlap_until_ms),
        "serial": c.serial,
        "fingerprint": c.fingerprint,
        "not_after": iso(c.not_after_ms),
    }


def event_json(e: CredentialEvent) -> dict[str, Any]:
    return {"at": iso(e.at_ms), "device_id": e.device_id, **e.as_data()}


def _mqtt(svc: Services, kind: CredentialKind) -> dict[str, Any]:
    credentials_of(svc)
    e = svc.endpoint
    port = e.x509_port if (e.x509_port and kind is CredentialKind.X509) else e.port
    out: dict[str, Any] = {"host": e.host, "port": port, "tls": e.tls, "ca_pem": e.ca_pem}
    if e.endpoints:  # a cluster: certificates log in on the same listeners as tokens
        out["endpoints"] = [[host, p] for host, p in e.endpoints]
    return out


class NewCredential(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["x509"] = Field(
        default="x509", description="x509: a client certificate (CN = device id) from our CA"
    )


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["token", "x509"] | None = Field(
        default=None, description="the new credential's type (default: the current one's)"
    )
    overlap_s: float | None = Field(
        default=None, gt=0, le=30 * 86400, description="the old one works at most this long"
    )


class CaRotationStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: Literal["start", "switch", "finish"] = Field(
        description="start: a new CA, trusted beside the old one; switch: the new CA signs "
        "(after every device has the bundle); finish: the old CA is no longer trusted"
    )


class ClaimSecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    overlap_s: float = Field(
        default=7 * 86400,
        ge=0,
        le=366 * 86400,
        description="how long the previous claim secret stays accepted (default 7 days)",
    )


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")
    duration_s: float | None = Field(
        default=None, gt=0, le=MAX_SECONDS, description="default: 300 s"
    )
    max_claims: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CLAIMS_LIMIT,
        description="claims this window takes (default: provisioning.max_claims_per_window)",
    )


@router.get("/devices/{device_id}/credentials")
async def device_credentials(device_id: str, svc: SvcDep) -> dict[str, Any]:
    """Every credential the device had (never a secret) and its recent credential events."""
    _device(svc, device_id)
    creds = credentials_of(svc)
    history = await creds.history(device_id)
    return {
        "device_id": device_id,
        "credentials": [credential_json(c) for c in history],
        "events": [event_json(e) for e in creds.events.for_device(device_id)],
    }


@router.post("/devices/{device_id}/credentials", status_code=201, dependencies=[Writer])
async def issue_credential(
    device_id: str, body: NewCredential, svc: SvcDep, audit: AuditDep
) -> dict[str, Any]:
    """Issue a client certificate: the response holds it and its key, once."""
    _device(svc, device_id)
    try:
        issued = await credentials_of(svc).issue_certificate(device_id)
    except CredentialUnavailableError as exc:
        raise ApiError(409, "unavailable", str(exc)) from None
    c = issued.credential
    await audit("credential.issued", device_id=device_id, credential_id=c.id, type=c.kind.value)
    return {
        "credential": credential_json(issued.credential),
        "cert_pem": issued.cert_pem,
        "key_pem": issued.key_pem,
        "mqtt": _mqtt(svc, CredentialKind.X509),
    }


@router.post("/devices/{device_id}/rotate", status_code=202, dependencies=[Writer])
async def rotate(device_id: str, body: Rotation, svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """Issue a new credential and deliver it on the device's command topic (`config`)."""
    _device(svc, device_id)
    kind = CredentialKind(body.type) if body.type else None
    try:
        issued = await credentials_of(svc).rotate(device_id, kind, body.overlap_s)
    except CredentialError as exc:
        raise ApiError(409, "cannot_rotate", str(exc)) from None
    c = issued.credential
    await audit(
        "credential.rotated",
        device_id=device_id,
        credential_id=c.id,
        type=c.kind.value,
        replaces=c.replaces,
        overlap_s=body.overlap_s,
    )
    return {
        "device_id": device_id,
        "credential": credential_json(c),
        "replaces": c.replaces,
        "overlap_until": iso(c.overlap_until_ms),
        "delivery": "sent to the device; it ends when the device acks it or the overlap ends",
    }


@router.post("/devices/{device_id}/revoke", dependencies=[Writer])
async def revoke(device_id: str, svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """Withdraw every credential of the device now: it is disconnected and cannot reconnect."""
    _device(svc, device_id)
    try:
        ended = await credentials_of(svc).revoke(device_id)
    except CredentialError as exc:
        raise ApiError(409, "unavailable", str(exc)) from None
    await audit("device.revoked", device_id=device_id, credential_ids=[c.id for c in ended])
    return {"device_id": device_id, "revoked": [credential_json(c) for c in ended]}


@router.get("/credentials/refused")
async def refused_logins(svc: SvcDep) -> dict[str, Any]:
    """Refused logins no device could be named for (newest last) and counts by event."""
    creds = credentials_of(svc)
    return {
        "events": [event_json(e) for e in creds.events.unattributed()],
        "counts": dict(creds.events.counts),
    }


# ---------------------------------------------------------------- provisioning by claim


async def _window_json(prov: ProvisioningService) -> dict[str, Any]:
    try:
        await prov.refresh()  # opened or closed through another instance a moment ago?
    except (StoreError, MqttServerError) as exc:  # answered from the last view
        log.warning("claim window: re-reading it failed (%s)", exc)
    counts = await prov.counts()
    return {
        "window_open": prov.window_open,
        "until": iso(prov.window_until_ms),
        "claim_usernames": _usernames(prov.first_slot, prov.slots),
        "claims": counts["claims"],
        "refused": counts["refused"],
        "refused_by": counts["refused_by"],
        "window_claims": counts["window_claims"],
        "window_max_claims": counts["window_max_claims"],
    }


@router.get("/provisioning")
async def provisioning_state(svc: SvcDep) -> dict[str, Any]:
    """Whether factory-fresh devices may claim credentials now, and until when."""
    return await _window_json(provisioning_of(svc))


@router.post("/provisioning/window", dependencies=[Writer])
async def open_window(body: Window, svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """Open (or extend) the claim window; each opening starts a fresh count of claims."""
    prov = provisioning_of(svc)
    try:
        until = await prov.open_window(body.duration_s, body.max_claims)
    except ProvisioningError as exc:
        raise ApiError(409, "unavailable", str(exc)) from None
    await audit(
        "claim_window.opened",
        until=iso(until),
        duration_s=body.duration_s or prov.default_window_s,
        max_claims=prov.window_claims[1],
    )
    return await _window_json(prov)


@router.delete("/provisioning/window", dependencies=[Writer])
async def close_window(svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """Close the claim window: the claim secret is refused from now on."""
    prov = provisioning_of(svc)
    was_open = prov.window_open
    await prov.close_window()
    await audit("claim_window.closed", was_open=was_open)
    return await _window_json(prov)


@router.get("/provisioning/claim-credential", dependencies=[AdminOnly])
async def claim_credential(svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """What factory firmware needs to claim: usernames, the shared secret, where, which CA."""
    prov = provisioning_of(svc)
    try:
        await prov.refresh()  # rotated through another instance a moment ago?
    except (StoreError, MqttServerError) as exc:  # answered from the last view
        log.warning("claim window: re-reading it failed (%s)", exc)
    if prov.claim_secret is None:
        raise ApiError(409, "unavailable", "provisioning by claim needs the supervised MQTT server")
    await audit("claim_secret.shown")
    e = svc.endpoint
    host, token_port, x509_port = e.host, e.port, e.x509_port
    return {
        "username_prefix": CLAIM_SLOT_PREFIX,
        "first_slot": prov.first_slot,
        "slots": prov.slots,
        "password": prov.claim_secret,
        "previous": _previous_json(prov),
        "mqtt": {
            "host": host,
            "port": token_port,
            "x509_port": x509_port or None,
            "tls": True,
            "ca_pem": svc.endpoint.ca_pem,
            # A cluster: every node, host:port first, as POST /devices gives (docs/scale-out.md)
            **({"endpoints": [[h, p] for h, p in e.endpoints]} if e.endpoints else {}),
        },
        "topics": {
            "request": f"{svc.topics.prefix}/provision/<username>/request",
            "reply": f"{svc.topics.prefix}/provision/<username>/reply",
        },
    }


@router.post("/provisioning/claim-secret/rotate", dependencies=[AdminOnly])
async def rotate_claim_secret(body: ClaimSecretRotation, svc: SvcDep) -> dict[str, Any]:
    """A new claim secret for factory firmware from now on, on the other half of the claim
    slots; the previous one stays accepted on its own slots for `overlap_s` (docs/security.md).
    The answer holds the new secret (also in claim-credential)."""
    prov = provisioning_of(svc)
    try:
        secret = await prov.rotate_claim_secret(body.overlap_s)
    except ProvisioningError as exc:
        raise ApiError(409, "unavailable", str(exc)) from None
    return {
        "password": secret,
        "username_prefix": CLAIM_SLOT_PREFIX,
        "first_slot": prov.first_slot,
        "slots": prov.slots,
        "claim_usernames": _usernames(prov.first_slot, prov.slots),
        "previous": _previous_json(prov),
    }


@router.delete("/provisioning/claim-secret/previous", dependencies=[AdminOnly])
async def end_claim_overlap(svc: SvcDep) -> dict[str, Any]:
    """End a claim secret rotation's overlap now: the previous claim secret is refused.
    409 if another instance rotated the secret at the same moment (its overlap stands)."""
    prov = provisioning_of(svc)
    try:
        await prov.end_claim_overlap()
    except ProvisioningError as exc:
        raise ApiError(409, "unavailable", str(exc)) from None
    return {"previous": None}


# ---------------------------------------------------------------- the CA (docs/security.md)


def _pki_json(svc: Services) -> dict[str, Any]:
    authority: Any = svc.authority
    phase = getattr(authority, "ca_rotation_phase", None)
    if phase is None:
        raise ApiError(409, "unavailable", "the CA belongs to the supervised Mosquitto")
    expiry = authority.certificate_expiry()
    return {
        "phase": phase(),
        "ca_pem": svc.endpoint.ca_pem,
        "expires": {name: iso(int(end * 1000)) for name, end in sorted(expiry.items())},
    }


@router.get("/pki", dependencies=[AdminOnly])
async def pki_state(svc: SvcDep) -> dict[str, Any]:
    """The CA rotation phase (none, overlap, switched), the CA bundle devices must trust and
    when each certificate ends."""
    return _pki_json(svc)


@router.post("/pki/rotate-ca", dependencies=[AdminOnly])
async def rotate_ca(body: CaRotationStep, svc: SvcDep) -> dict[str, Any]:
    """One step of a CA rotation with an overlap in which devices trust both CAs: `start`,
    then (every device has the new `ca_pem` bundle) `switch`, then `finish`."""
    rotate = getattr(svc.authority, "rotate_ca", None)
    if rotate is None:
        raise ApiError(409, "unavailable", "the CA belongs to the supervised Mosquitto")
    try:
        await rotate(body.step)
    except errors.MqttServerError as exc:  # a step out of order (PkiError) or a failed reload
        raise ApiError(409, "conflict", str(exc)) from None
    return _pki_json(svc)


def _usernames(first: int, slots: int) -> str:
    return f"{CLAIM_SLOT_PREFIX}{first} .. {CLAIM_SLOT_PREFIX}{first + slots - 1}"


def _previous_json(prov: ProvisioningService) -> dict[str, Any] | None:
    previous = prov.previous_claim
    if previous is None:
        return None
    return {"claim_usernames": _usernames(previous[0], prov.slots), "until": iso(previous[1])}
