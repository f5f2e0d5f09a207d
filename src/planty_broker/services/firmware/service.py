"""Firmware releases and staged rollouts: the front door (docs/firmware.md).

Releases are stored whole (files and manifest) or not at all, and never change. Starting
a rollout and every admin action (pause, resume, abort) are committed with their
`firmware` event; the engine (engine.py) does the rest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

from planty_broker.domain.events import NewEvent
from planty_broker.domain.firmware import (
    FIRMWARE_EVENT_TYPE,
    Release,
    Rollout,
    RolloutError,
    RolloutState,
    Target,
    TargetState,
    assign_waves,
    choose_devices,
    make_release,
    plan_waves,
)
from planty_broker.services.firmware.engine import (
    LiveRollout,
    ReleaseNotFoundError,
    RolloutEngine,
    RolloutNotFoundError,
)
from planty_broker.text import plural

log = logging.getLogger(__name__)

__all__ = ["FirmwareService", "ReleaseNotFoundError", "RolloutNotFoundError"]


class FirmwareService(RolloutEngine):
    """Releases, rollouts and their admin actions, over the engine."""

    # ------------------------------------------------------------ releases

    async def add_release(
        self, version: str, contents: Mapping[str, bytes], notes: str = ""
    ) -> Release:
        at = self._clock()
        release = make_release(version, contents, at, self.settings.max_release_bytes, notes)
        event = NewEvent(
            at,
            FIRMWARE_EVENT_TYPE,
            None,
            {
                "action": "release_added",
                "version": version,
                "files": len(release.files),
                "size": release.size,
            },
        )
        await self._store.add_release(release, contents, [event])
        log.info(
            "firmware: release %s added (%s, %d bytes)",
            version,
            plural(len(release.files), "file"),
            release.size,
        )
        return release

    async def releases(self) -> list[Release]:
        return await self._store.list_releases()

    async def release(self, version: str) -> Release:
        found = await self._store.get_release(version)
        if found is None:
            raise ReleaseNotFoundError(f"no release {version}: add it with `planty firmware add`")
        return found

    # ------------------------------------------------------------ rollouts (admin)

    async def start_rollout(
        self,
        version: str,
        *,
        devices: Sequence[str] | None = None,
        percent: float | None = None,
        everything: bool = False,
        first_wave: int | None = None,
        threshold: float | None = None,
    ) -> Rollout:
        release = await self.release(version)
        async with self._lock:
            chosen = choose_devices(
                [d.id for d in self._registry.all()],
                devices=devices,
                percent=percent,
                everything=everything,
                seed=f"{version}:{self._clock()}",
            )
            if not chosen:
                raise RolloutError("no devices to update: register some first")
            busy = sorted(d for d in chosen if d in self._device_rollout)
            if busy:
                raise RolloutError(
                    f"{len(busy)} of these devices are in an active rollout already "
                    f"({', '.join(busy[:5])}): abort it or let it finish"
                )
            sizes = plan_waves(len(chosen), first_wave)
            waves = assign_waves(chosen, sizes)
            at = self._clock()
            rollout = Rollout(
                id=0,
                version=version,
                state=RolloutState.RUNNING,
                wave_sizes=sizes,
                threshold=self.settings.threshold if threshold is None else threshold,
                created_ms=at,
                updated_ms=at,
                options={"devices": len(chosen)},
            )
            targets = [Target(0, d, waves[d], updated_ms=at) for d in chosen]
            event = self._admin_event(rollout, "rollout_started", at)
            event.data["waves"] = list(sizes)
            created = await self._store.create_rollout(rollout, targets, [event])
            targets = [Target(created.id, t.device_id, t.wave, updated_ms=at) for t in targets]
            live = LiveRollout(
                created,
                {t.device_id: t for t in targets},
                release,
                await self._store.release_contents(version),
            )
            self._live[created.id] = live
            for d in chosen:
                self._device_rollout[d] = created.id
        log.info(
            "firmware: rollout %d of %s to %s in waves %s",
            created.id,
            version,
            plural(len(chosen), "device"),
            sizes,
        )
        self._wake.set()
        return created

    async def pause(self, rollout_id: int) -> Rollout:
        return await self._admin(rollout_id, "pause", {RolloutState.RUNNING}, RolloutState.PAUSED)

    async def resume(self, rollout_id: int) -> Rollout:
        return await self._admin(
            rollout_id, "resume", {RolloutState.PAUSED, RolloutState.HALTED}, RolloutState.RUNNING
        )

    async def abort(self, rollout_id: int) -> Rollout:
        states = {RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED}
        return await self._admin(rollout_id, "abort", states, RolloutState.ABORTED)

    async def _admin(
        self, rollout_id: int, action: str, allowed: set[RolloutState], new: RolloutState
    ) -> Rollout:
        async with self._lock:
            live = self._live.get(rollout_id)
            if live is None:
                found = await self._store.get_rollout(rollout_id)
                if found is None:
                    raise RolloutNotFoundError(f"no rollout {rollout_id}")
                raise RolloutError(f"rollout {rollout_id} is {found.state}: it cannot {action}")
            r = live.rollout
            if r.state not in allowed:
                raise RolloutError(f"rollout {rollout_id} is {r.state}: it cannot {action}")
            at = self._clock()
            updated = r.to(new, at, "by the admin" if new is not RolloutState.RUNNING else "")
            if r.state is RolloutState.HALTED and new is RolloutState.RUNNING:
                # the admin accepts the halted wave's failures: go on with the next one
                updated = dataclasses.replace(updated, wave=min(r.wave + 1, len(r.wave_sizes) - 1))
            changed: list[Target] = []
            events = [self._admin_event(updated, action, at)]
            if new is RolloutState.ABORTED:
                for t in live.targets.values():
                    if t.state in (TargetState.PENDING, TargetState.SENDING):
                        if t.device_id in self.transfers:
                            await self.transfers.abort(t.device_id)
                        changed.append(t.to(TargetState.FAILED, at, "rollout aborted"))
            await self._commit(live, updated, changed, events)
            if new is RolloutState.ABORTED:
                self._retire(live)
        log.info("firmware: rollout %d %s", rollout_id, new)
        self._wake.set()
        return updated

    # ------------------------------------------------------------ reading

    async def rollouts(self, limit: int = 100) -> list[Rollout]:
        return await self._store.list_rollouts(limit)

    async def rollout(self, rollout_id: int) -> tuple[Rollout, list[Target]]:
        live = self._live.get(rollout_id)
        if live is not None:
            return live.rollout, sorted(live.targets.values(), key=lambda t: (t.wave, t.device_id))
        found = await self._store.get_rollout(rollout_id)
        if found is None:
            raise RolloutNotFoundError(f"no rollout {rollout_id}")
        return found, await self._store.rollout_targets(rollout_id)

    async def device_targets(self, device_id: str) -> list[Target]:
        rid = self._device_rollout.get(device_id)
        found = await self._store.device_targets(device_id)
        if rid is not None and rid in self._live:  # the live one is newer than the store's
            live_t = self._live[rid].targets.get(device_id)
            found = [live_t if (live_t and t.rollout_id == rid) else t for t in found]
        return found

    def progress(self, device_id: str) -> tuple[int, int] | None:
        """(bytes the device confirmed, release size) while it is being sent to."""
        s = self.transfers.sessions.get(device_id)
        return None if s is None else (s.confirmed, s.release.size)

    def supports_updates(self, device_id: str) -> bool | None:
        """From its last status: True, False, or None when no status was seen yet."""
        if device_id not in self._ota:
            return None
        return self._ota[device_id] is not None
