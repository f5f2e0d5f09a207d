"""`FirmwareStore` in memory: the fast fake beside `sql_firmware`, same order and same events."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from planty_broker.domain.events import NewEvent
from planty_broker.domain.firmware import Release, Rollout, Target
from planty_broker.ports.store import ReleaseExistsError


class MemoryFirmwareMixin:
    """Needs `_check()` and `_log_events()` from `MemoryStore` / `MemoryQueueMixin`."""

    __releases: dict[str, tuple[Release, dict[str, bytes]]] | None = None
    __rollouts: dict[int, Rollout] | None = None
    __targets: dict[tuple[int, str], Target] | None = None

    def _check(self) -> None:
        raise NotImplementedError  # provided by MemoryStore

    def _log_events(self, new: Sequence[NewEvent]) -> None:
        raise NotImplementedError  # provided by MemoryQueueMixin

    @property
    def _fw(
        self,
    ) -> tuple[
        dict[str, tuple[Release, dict[str, bytes]]],
        dict[int, Rollout],
        dict[tuple[int, str], Target],
    ]:
        if self.__releases is None or self.__rollouts is None or self.__targets is None:
            self.__releases, self.__rollouts, self.__targets = {}, {}, {}
        return self.__releases, self.__rollouts, self.__targets

    async def add_release(
        self, release: Release, contents: Mapping[str, bytes], events: Sequence[NewEvent]
    ) -> None:
        self._check()
        releases = self._fw[0]
        if release.version in releases:
            raise ReleaseExistsError(
                f"release {release.version} exists already; releases are immutable, "
                "add the new files under a new version"
            )
        releases[release.version] = (release, {n: bytes(d) for n, d in contents.items()})
        self._log_events(events)

    async def list_releases(self) -> list[Release]:
        self._check()
        found = [r for r, _ in self._fw[0].values()]
        return sorted(found, key=lambda r: (r.created_ms, r.version), reverse=True)

    async def get_release(self, version: str) -> Release | None:
        self._check()
        found = self._fw[0].get(version)
        return None if found is None else found[0]

    async def release_contents(self, version: str) -> dict[str, bytes]:
        self._check()
        found = self._fw[0].get(version)
        return {} if found is None else dict(found[1])

    async def create_rollout(
        self, rollout: Rollout, targets: Sequence[Target], events: Sequence[NewEvent]
    ) -> Rollout:
        self._check()
        _, rollouts, all_targets = self._fw
        rid = max(rollouts, default=0) + 1
        created = dataclasses.replace(rollout, id=rid)
        rollouts[rid] = created
        for t in targets:
            all_targets[(rid, t.device_id)] = dataclasses.replace(t, rollout_id=rid)
        self._log_events(
            [NewEvent(e.at_ms, e.type, e.device_id, e.data | {"rollout": rid}) for e in events]
        )
        return created

    async def save_rollout(
        self, rollout: Rollout | None, targets: Sequence[Target], events: Sequence[NewEvent]
    ) -> None:
        self._check()
        _, rollouts, all_targets = self._fw
        if rollout is not None and rollout.id in rollouts:
            rollouts[rollout.id] = rollout
        for t in targets:
            key = (t.rollout_id, t.device_id)
            if key in all_targets:
                all_targets[key] = t
        self._log_events(events)

    async def list_rollouts(self, limit: int = 100) -> list[Rollout]:
        self._check()
        rollouts = self._fw[1]
        return [rollouts[i] for i in sorted(rollouts, reverse=True)[:limit]]

    async def get_rollout(self, rollout_id: int) -> Rollout | None:
        self._check()
        return self._fw[1].get(rollout_id)

    async def rollout_targets(self, rollout_id: int) -> list[Target]:
        self._check()
        found = [t for (rid, _), t in self._fw[2].items() if rid == rollout_id]
        return sorted(found, key=lambda t: (t.wave, t.device_id))

    async def device_targets(self, device_id: str, limit: int = 20) -> list[Target]:
        self._check()
        found = [t for (_, did), t in self._fw[2].items() if did == device_id]
        return sorted(found, key=lambda t: t.rollout_id, reverse=True)[:limit]
