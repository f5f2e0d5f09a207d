"""Firmware releases and rollouts on SQL (`FirmwareStore`); each write and its events in one tx."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from planty_broker.domain.events import NewEvent
from planty_broker.domain.firmware import (
    Release,
    ReleaseFile,
    Rollout,
    RolloutState,
    Target,
    TargetState,
)
from planty_broker.ports.store import ReleaseExistsError
from planty_broker.storage.schema_firmware import (
    firmware_files,
    firmware_releases,
    firmware_rollouts,
    firmware_targets,
)
from planty_broker.storage.sql_events import event_params, insert_events

T = TypeVar("T")


def _release(r: Any) -> Release:
    m = r._mapping
    files = tuple(ReleaseFile(f["name"], f["size"], f["sha256"]) for f in m["manifest"])
    return Release(m["version"], files, m["created_ms"], m["notes"])


def _rollout_data(r: Rollout) -> dict[str, Any]:
    return {
        "wave_sizes": list(r.wave_sizes),
        "threshold": r.threshold,
        "wave": r.wave,
        "reason": r.reason,
        "options": r.options,
    }


def _rollout(r: Any) -> Rollout:
    m = r._mapping
    d = m["data"]
    return Rollout(
        id=m["id"],
        version=m["version"],
        state=RolloutState(m["state"]),
        wave_sizes=tuple(d["wave_sizes"]),
        threshold=d["threshold"],
        created_ms=m["created_ms"],
        updated_ms=m["updated_ms"],
        wave=d["wave"],
        reason=d["reason"],
        options=d.get("options", {}),
    )


def _target(r: Any) -> Target:
    m = r._mapping
    return Target(
        m["rollout_id"],
        m["device_id"],
        m["wave"],
        TargetState(m["state"]),
        m["reason"],
        m["updated_ms"],
        m["progress"],
    )


def _target_row(t: Target) -> dict[str, Any]:
    return {
        "rollout_id": t.rollout_id,
        "device_id": t.device_id,
        "wave": t.wave,
        "state": t.state.value,
        "reason": t.reason[:500],
        "progress": t.progress,
        "updated_ms": t.updated_ms,
    }


def _add_release(
    conn: Connection, release: Release, contents: Mapping[str, bytes], events: Sequence[NewEvent]
) -> None:
    manifest = [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in release.files]
    try:
        conn.execute(
            insert(firmware_releases).values(
                version=release.version,
                manifest=manifest,
                size=release.size,
                notes=release.notes,
                created_ms=release.created_ms,
            )
        )
    except IntegrityError:
        raise ReleaseExistsError(
            f"release {release.version} exists already; releases are immutable, "
            "add the new files under a new version"
        ) from None
    conn.execute(
        insert(firmware_files),
        [{"version": release.version, "name": n, "data": d} for n, d in contents.items()],
    )
    insert_events(conn, [event_params(e) for e in events])


def _create(
    conn: Connection, rollout: Rollout, targets: Sequence[Target], events: Sequence[NewEvent]
) -> Rollout:
    rid = conn.execute(
        insert(firmware_rollouts)
        .values(
            version=rollout.version,
            state=rollout.state.value,
            data=_rollout_data(rollout),
            created_ms=rollout.created_ms,
            updated_ms=rollout.updated_ms,
        )
        .returning(firmware_rollouts.c.id)
    ).scalar_one()
    if targets:
        conn.execute(
            insert(firmware_targets), [_target_row(t) | {"rollout_id": rid} for t in targets]
        )
    fixed = [NewEvent(e.at_ms, e.type, e.device_id, e.data | {"rollout": rid}) for e in events]
    insert_events(conn, [event_params(e) for e in fixed])
    return Rollout(
        int(rid),
        rollout.version,
        rollout.state,
        rollout.wave_sizes,
        rollout.threshold,
        rollout.created_ms,
        rollout.updated_ms,
        rollout.wave,
        rollout.reason,
        rollout.options,
    )


def _save(
    conn: Connection, rollout: Rollout | None, targets: Sequence[Target], events: Sequence[NewEvent]
) -> None:
    if rollout is not None:
        conn.execute(
            update(firmware_rollouts)
            .where(firmware_rollouts.c.id == rollout.id)
            .values(
                state=rollout.state.value,
                data=_rollout_data(rollout),
                updated_ms=rollout.updated_ms,
            )
        )
    c = firmware_targets.c
    for t in targets:
        row = _target_row(t)
        conn.execute(
            update(firmware_targets)
            .where(c.rollout_id == t.rollout_id, c.device_id == t.device_id)
            .values(
                state=row["state"],
                reason=row["reason"],
                progress=row["progress"],
                updated_ms=row["updated_ms"],
            )
        )
    insert_events(conn, [event_params(e) for e in events])


class SqlFirmwareMixin:
    """`FirmwareStore` methods of `SqlStore` (which provides `_call` and `_in_tx`)."""

    _call: Callable[..., Awaitable[Any]]

    @staticmethod
    def _in_tx(engine: Engine, fn: Callable[[Connection], T]) -> T:
        raise NotImplementedError  # provided by SqlStore

    async def add_release(
        self, release: Release, contents: Mapping[str, bytes], events: Sequence[NewEvent]
    ) -> None:
        await self._call(
            self._in_tx, lambda conn: _add_release(conn, release, dict(contents), list(events))
        )

    async def list_releases(self) -> list[Release]:
        q = select(*firmware_releases.c).order_by(
            firmware_releases.c.created_ms.desc(), firmware_releases.c.version.desc()
        )
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [_release(r) for r in rows]

    async def get_release(self, version: str) -> Release | None:
        q = select(*firmware_releases.c).where(firmware_releases.c.version == version)
        row = await self._call(self._in_tx, lambda conn: conn.execute(q).first())
        return None if row is None else _release(row)

    async def release_contents(self, version: str) -> dict[str, bytes]:
        c = firmware_files.c
        q = select(c.name, c.data).where(c.version == version)
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return {r[0]: bytes(r[1]) for r in rows}

    async def create_rollout(
        self, rollout: Rollout, targets: Sequence[Target], events: Sequence[NewEvent]
    ) -> Rollout:
        created: Rollout = await self._call(
            self._in_tx, lambda conn: _create(conn, rollout, list(targets), list(events))
        )
        return created

    async def save_rollout(
        self, rollout: Rollout | None, targets: Sequence[Target], events: Sequence[NewEvent]
    ) -> None:
        if rollout is None and not targets and not events:
            return
        await self._call(
            self._in_tx, lambda conn: _save(conn, rollout, list(targets), list(events))
        )

    async def list_rollouts(self, limit: int = 100) -> list[Rollout]:
        q = select(*firmware_rollouts.c).order_by(firmware_rollouts.c.id.desc()).limit(limit)
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [_rollout(r) for r in rows]

    async def get_rollout(self, rollout_id: int) -> Rollout | None:
        q = select(*firmware_rollouts.c).where(firmware_rollouts.c.id == rollout_id)
        row = await self._call(self._in_tx, lambda conn: conn.execute(q).first())
        return None if row is None else _rollout(row)

    async def rollout_targets(self, rollout_id: int) -> list[Target]:
        c = firmware_targets.c
        q = (
            select(*firmware_targets.c)
            .where(c.rollout_id == rollout_id)
            .order_by(c.wave, c.device_id)
        )
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [_target(r) for r in rows]

    async def device_targets(self, device_id: str, limit: int = 20) -> list[Target]:
        c = firmware_targets.c
        q = (
            select(*firmware_targets.c)
            .where(c.device_id == device_id)
            .order_by(c.rollout_id.desc())
            .limit(limit)
        )
        rows = await self._call(self._in_tx, lambda conn: conn.execute(q).all())
        return [_target(r) for r in rows]
