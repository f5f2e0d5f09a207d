"""Firmware routes: releases (immutable), staged rollouts and their per-device state.

Adding a release and every rollout action need the `admin` scope; reading needs any token.
Errors: a release that cannot be stored 422 (`invalid_release`), an existing version 409
(`release_exists`), an unknown release or rollout 404, a rollout request or action that
cannot be done 409 (`rollout_refused`), the store down 503.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from planty_broker.domain.firmware import Release, ReleaseError, Rollout, RolloutError, Target
from planty_broker.errors import StoreError
from planty_broker.northbound.api.auth import Scope
from planty_broker.northbound.api.deps import Audit, AuditDep, SvcDep, require_scope
from planty_broker.northbound.api.errors import ApiError
from planty_broker.northbound.api.limits import IdPath
from planty_broker.northbound.api.timefmt import iso
from planty_broker.ports.store import ReleaseExistsError
from planty_broker.services.context import Services
from planty_broker.services.firmware.service import (
    FirmwareService,
    ReleaseNotFoundError,
    RolloutNotFoundError,
)

router = APIRouter(tags=["firmware"])
Admin = Depends(require_scope(Scope.ADMIN))
ReleaseBody = Annotated[
    dict[str, Any],
    Body(
        examples=[
            {
                "version": "1.3.0",
                "notes": "calibrated soil sensor",
                "files": [{"name": "main.py", "content_b64": "aW1wb3J0IGpzb24K"}],
            }
        ]
    ),
]
RolloutBody = Annotated[
    dict[str, Any],
    Body(examples=[{"percent": 10}, {"devices": ["plant-01", "plant-02"]}, {"all": True}]),
]


def firmware_of(svc: Services) -> FirmwareService:
    found = svc.firmware
    if found is None:
        raise ApiError(503, "unavailable", "the firmware service is not running")
    return found


def release_json(r: Release) -> dict[str, Any]:
    return {
        "version": r.version,
        "size": r.size,
        "notes": r.notes,
        "created_at": iso(r.created_ms),
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in r.files],
    }


def target_json(t: Target, fw: FirmwareService | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "device_id": t.device_id,
        "rollout": t.rollout_id,
        "wave": t.wave + 1,
        "state": t.state.value,
        "reason": t.reason or None,
        "updated_at": iso(t.updated_ms),
    }
    progress = fw.progress(t.device_id) if fw is not None and not t.final else None
    if progress is not None:
        out["bytes_confirmed"], out["bytes_total"] = progress
    return out


def rollout_json(r: Rollout, targets: list[Target] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": r.id,
        "version": r.version,
        "state": r.state.value,
        "reason": r.reason or None,
        "wave": r.wave + 1,
        "wave_sizes": list(r.wave_sizes),
        "threshold": r.threshold,
        "created_at": iso(r.created_ms),
        "updated_at": iso(r.updated_ms),
    }
    if targets is not None:
        counts: dict[str, int] = {}
        for t in targets:
            counts[t.state.value] = counts.get(t.state.value, 0) + 1
        out["counts"] = counts
    return out


def _unavailable(exc: StoreError) -> ApiError:
    return ApiError(503, "store_unavailable", f"nothing was changed: {exc}")


def _decode_files(body: dict[str, Any]) -> dict[str, bytes]:
    files = body.get("files")
    if not isinstance(files, list) or not files:
        raise ApiError(422, "invalid_release", "files: a list of {name, content_b64}")
    out: dict[str, bytes] = {}
    for f in files:
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise ApiError(422, "invalid_release", "each file needs a name and content_b64")
        try:
            out[f["name"]] = base64.b64decode(str(f.get("content_b64", "")), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(
                422, "invalid_release", f"file {f['name']}: content_b64 is not base64"
            ) from None
    return out


@router.post("/firmware", status_code=201, dependencies=[Admin])
async def add_release(body: ReleaseBody, svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """Store a release: its files, each with its sha256 in the manifest. Immutable once added."""
    version = body.get("version")
    if not isinstance(version, str):
        raise ApiError(422, "invalid_release", "version: a string such as 1.3.0")
    notes = body.get("notes") or ""
    try:
        release = await firmware_of(svc).add_release(version, _decode_files(body), str(notes))
    except ReleaseExistsError as exc:
        raise ApiError(409, "release_exists", str(exc)) from None
    except ReleaseError as exc:
        raise ApiError(422, "invalid_release", str(exc)) from None
    except StoreError as exc:
        raise _unavailable(exc) from None
    await audit("firmware.added", version=version)
    return release_json(release)


@router.get("/firmware")
async def list_releases(svc: SvcDep) -> dict[str, Any]:
    """Every release, newest first."""
    return {"releases": [release_json(r) for r in await firmware_of(svc).releases()]}


@router.get("/firmware/{version}")
async def get_release(version: str, svc: SvcDep) -> dict[str, Any]:
    """One release: its files, sizes and sha256 (the manifest devices check)."""
    try:
        return release_json(await firmware_of(svc).release(version))
    except ReleaseNotFoundError as exc:
        raise ApiError(404, "unknown_release", str(exc)) from None


@router.post("/firmware/{version}/rollouts", status_code=201, dependencies=[Admin])
async def start_rollout(
    version: str, body: RolloutBody, svc: SvcDep, audit: AuditDep
) -> dict[str, Any]:
    """Start sending a release: `devices`, `percent` or `all`; `first_wave`, `threshold`."""
    fw = firmware_of(svc)
    devices = body.get("devices")
    percent = body.get("percent")
    first = body.get("first_wave")
    threshold = body.get("threshold")
    if devices is not None and (
        not isinstance(devices, list) or not all(isinstance(d, str) for d in devices)
    ):
        raise ApiError(422, "invalid_rollout", "devices: a list of device ids")
    if percent is not None and not isinstance(percent, (int, float)):
        raise ApiError(422, "invalid_rollout", "percent: a number above 0, at most 100")
    if first is not None and (not isinstance(first, int) or first < 1):
        raise ApiError(422, "invalid_rollout", "first_wave: a whole number of devices, at least 1")
    if threshold is not None and (
        not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1
    ):
        raise ApiError(422, "invalid_rollout", "threshold: a share from 0 to 1, e.g. 0.2")
    try:
        rollout = await fw.start_rollout(
            version,
            devices=devices,
            percent=float(percent) if percent is not None else None,
            everything=body.get("all") is True,
            first_wave=first,
            threshold=float(threshold) if threshold is not None else None,
        )
        r, targets = await fw.rollout(rollout.id)
    except ReleaseNotFoundError as exc:
        raise ApiError(404, "unknown_release", str(exc)) from None
    except RolloutError as exc:
        raise ApiError(409, "rollout_refused", str(exc)) from None
    except StoreError as exc:
        raise _unavailable(exc) from None
    await audit("rollout.started", rollout_id=r.id, version=version, devices=len(targets))
    return rollout_json(r, targets) | {"targets": [target_json(t, fw) for t in targets]}


@router.get("/rollouts")
async def list_rollouts(
    svc: SvcDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """Rollouts, newest first (without their targets)."""
    return {"rollouts": [rollout_json(r) for r in await firmware_of(svc).rollouts(limit)]}


@router.get("/rollouts/{rollout_id}")
async def get_rollout(rollout_id: IdPath, svc: SvcDep) -> dict[str, Any]:
    """A rollout with every device's state: pending, sending, applied, failed, rolled_back."""
    fw = firmware_of(svc)
    try:
        r, targets = await fw.rollout(rollout_id)
    except RolloutNotFoundError as exc:
        raise ApiError(404, "unknown_rollout", str(exc)) from None
    return rollout_json(r, targets) | {"targets": [target_json(t, fw) for t in targets]}


async def _act(svc: Services, rollout_id: int, action: str, audit: Audit) -> dict[str, Any]:
    fw = firmware_of(svc)
    try:
        await getattr(fw, action)(rollout_id)
        r, targets = await fw.rollout(rollout_id)
    except RolloutNotFoundError as exc:
        raise ApiError(404, "unknown_rollout", str(exc)) from None
    except RolloutError as exc:
        raise ApiError(409, "rollout_refused", str(exc)) from None
    except StoreError as exc:
        raise _unavailable(exc) from None
    await audit(f"rollout.{action}", rollout_id=rollout_id)
    return rollout_json(r, targets)


@router.post("/rollouts/{rollout_id}/pause", dependencies=[Admin])
async def pause_rollout(rollout_id: IdPath, svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """No new device starts; transfers under way finish."""
    return await _act(svc, rollout_id, "pause", audit)


@router.post("/rollouts/{rollout_id}/resume", dependencies=[Admin])
async def resume_rollout(rollout_id: IdPath, svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """Go on after a pause, or after the rollout halted itself."""
    return await _act(svc, rollout_id, "resume", audit)


@router.post("/rollouts/{rollout_id}/abort", dependencies=[Admin])
async def abort_rollout(rollout_id: IdPath, svc: SvcDep, audit: AuditDep) -> dict[str, Any]:
    """Stop for good: devices not yet switched drop what they received (`failed`)."""
    return await _act(svc, rollout_id, "abort", audit)


@router.get("/devices/{device_id}/firmware")
async def device_firmware(device_id: str, svc: SvcDep) -> dict[str, Any]:
    """A device's updates: whether it takes them, and its state in each rollout."""
    if device_id not in svc.registry:
        raise ApiError(404, "unknown_device", f"no device {device_id!r}")
    fw = firmware_of(svc)
    return {
        "device_id": device_id,
        "supports_updates": fw.supports_updates(device_id),
        "updates": [target_json(t, fw) for t in await fw.device_targets(device_id)],
    }
