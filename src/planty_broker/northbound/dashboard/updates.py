"""What the dashboard shows of firmware updates: a device's updates, the rollouts, one rollout."""

from __future__ import annotations

from typing import Any

from planty_broker.domain.firmware import Rollout, Target
from planty_broker.services.context import Services


def _target(t: Target, svc: Services) -> dict[str, Any]:
    fw = svc.firmware
    progress = fw.progress(t.device_id) if fw is not None and not t.final else None
    pct = None if progress is None else progress[0] * 100 // max(1, progress[1])
    return {
        "device_id": t.device_id,
        "rollout": t.rollout_id,
        "wave": t.wave + 1,
        "state": t.state.value,
        "reason": t.reason,
        "updated_ms": t.updated_ms,
        "progress": pct,
    }


def _rollout(r: Rollout, targets: list[Target] | None = None) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for t in targets or []:
        counts[t.state.value] = counts.get(t.state.value, 0) + 1
    return {
        "id": r.id,
        "version": r.version,
        "state": r.state.value,
        "reason": r.reason,
        "wave": r.wave + 1,
        "waves": len(r.wave_sizes),
        "wave_sizes": list(r.wave_sizes),
        "threshold": r.threshold,
        "created_ms": r.created_ms,
        "updated_ms": r.updated_ms,
        "counts": counts,
    }


async def device_updates(svc: Services, device_id: str) -> dict[str, Any]:
    fw = svc.firmware
    if fw is None:
        return {"enabled": False, "supports": None, "updates": []}
    targets = await fw.device_targets(device_id)
    versions = {}
    for t in targets:
        if t.rollout_id not in versions:
            r, _ = await fw.rollout(t.rollout_id)
            versions[t.rollout_id] = r.version
    rows = [_target(t, svc) | {"version": versions[t.rollout_id]} for t in targets]
    return {"enabled": True, "supports": fw.supports_updates(device_id), "updates": rows}


async def rollouts(svc: Services) -> dict[str, Any]:
    fw = svc.firmware
    if fw is None:
        return {"enabled": False, "rollouts": [], "releases": []}
    out = []
    for r in await fw.rollouts(50):
        _, targets = await fw.rollout(r.id)
        out.append(_rollout(r, targets))
    releases = [
        {"version": x.version, "size": x.size, "files": len(x.files), "created_ms": x.created_ms}
        for x in await fw.releases()
    ]
    return {"enabled": True, "rollouts": out, "releases": releases[:20]}


async def rollout(svc: Services, rollout_id: int) -> dict[str, Any] | None:
    fw = svc.firmware
    if fw is None:
        return None
    r, targets = await fw.rollout(rollout_id)
    return {"rollout": _rollout(r, targets), "targets": [_target(t, svc) for t in targets]}
