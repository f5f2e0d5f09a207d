"""The rollout engine: the one task that moves rollouts and their devices (docs/firmware.md).

One task (the engine) changes rollout state: acks, statuses and presence changes are
queued to it, so there are no races between them. A device gets the update only when its
wave has come, it is online, and its status says it takes updates; a device that is away
gets it when it returns. A target's every step is committed with its `firmware` event
before anything else happens. After a gateway restart the engine reloads the active
rollouts and offers again to the devices it was sending to: they resume.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from planty_broker.config import FirmwareSettings
from planty_broker.domain.events import NewEvent
from planty_broker.domain.firmware import (
    FIRMWARE_EVENT_TYPE,
    Release,
    Rollout,
    RolloutError,
    RolloutState,
    Target,
    TargetState,
    judge_wave,
)
from planty_broker.domain.models import PresenceState
from planty_broker.ports.link import Publisher
from planty_broker.ports.store import FirmwareStore
from planty_broker.protocol import OtaSupport, Status, Topics
from planty_broker.protocol_ota import OtaAck
from planty_broker.services.bus import Bus, DevicesChanged, DeviceStatusReceived, PresenceChanged
from planty_broker.services.firmware.transfer import Transfers
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.tasks import spawn, wait_event

log = logging.getLogger(__name__)

TICK_S = 0.5
Pace = Callable[[], Awaitable[None]]


class RolloutNotFoundError(RolloutError, LookupError):
    """No rollout with that id."""


class ReleaseNotFoundError(RolloutError, LookupError):
    """No release with that version."""


@dataclass(slots=True)
class LiveRollout:
    """An active rollout in memory: the row, its targets by device, its release."""

    rollout: Rollout
    targets: dict[str, Target]
    release: Release
    contents: Mapping[str, bytes]


async def _no_pace() -> None:
    return None


class RolloutEngine:
    """State and the engine task; `FirmwareService` adds the front door."""

    def __init__(
        self,
        store: FirmwareStore,
        bus: Bus,
        registry: DeviceRegistry,
        presence: PresenceService,
        topics: Topics,
        settings: FirmwareSettings,
        *,
        pace: Pace = _no_pace,
        clock: Callable[[], int] = now_ms,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._registry = registry
        self._presence = presence
        self.settings = settings
        self._pace = pace
        self._clock = clock
        self.link: Publisher | None = None
        self.transfers = Transfers(topics, settings, self._send, self._on_outcome, mono)
        self._live: dict[int, LiveRollout] = {}
        self._device_rollout: dict[str, int] = {}  # device -> its active rollout
        self._ota: dict[str, OtaSupport | None] = {}  # registered devices' last status
        self._fw: dict[str, str | None] = {}
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._outcomes: list[tuple[str, str, str]] = []  # from the transfers, within a step
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # admin actions against the engine
        bus.subscribe(DeviceStatusReceived, self._on_status)
        bus.subscribe(PresenceChanged, self._on_presence)
        bus.subscribe(DevicesChanged, self._on_devices)

    # ------------------------------------------------------------ lifecycle

    def attach(self, link: Publisher) -> None:
        self.link = link

    async def start(self) -> None:
        for r in await self._store.list_rollouts(limit=1000):
            if r.active:
                await self._load(r)
        self._task = spawn("firmware-engine", self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _load(self, r: Rollout) -> LiveRollout:
        release = await self._store.get_release(r.version)
        if release is None:  # cannot happen: releases are never deleted
            raise ReleaseNotFoundError(f"release {r.version} of rollout {r.id} is missing")
        contents = await self._store.release_contents(r.version)
        targets = {t.device_id: t for t in await self._store.rollout_targets(r.id)}
        live = LiveRollout(r, targets, release, contents)
        self._live[r.id] = live
        for t in targets.values():
            if not t.final:
                self._device_rollout[t.device_id] = r.id
            if t.state is TargetState.SENDING:  # resumes when the device is (back) online
                self.transfers.open(t.device_id, r.id, release, contents, None)
        return live

    def _admin_event(self, r: Rollout, action: str, at: int, reason: str = "") -> NewEvent:
        data: dict[str, Any] = {"action": action, "rollout": r.id, "version": r.version}
        if reason:
            data["reason"] = reason
        return NewEvent(at, FIRMWARE_EVENT_TYPE, None, data)

    # ------------------------------------------------------------ inputs (queued)

    def handle_ota_ack(self, device_id: str, ack: OtaAck, at_ms: int) -> None:
        """Ingest's hook for `ota_ack` messages."""
        self._push("ack", (device_id, ack))

    def _on_status(self, e: DeviceStatusReceived) -> None:
        status: Status = e.status
        if not isinstance(status, Status) or e.device_id not in self._registry:
            return
        if status.online:
            self._ota[e.device_id] = status.ota
            self._fw[e.device_id] = status.fw
        self._push("status", (e.device_id, status))

    def _on_presence(self, e: PresenceChanged) -> None:
        if e.transition.state is PresenceState.ONLINE:
            self._push("online", e.transition.device_id)

    def _on_devices(self, e: DevicesChanged) -> None:
        if e.change == "removed":
            self._ota.pop(e.device_id, None)
            self._fw.pop(e.device_id, None)

    def _push(self, kind: str, item: Any) -> None:
        if len(self._inbox) < 100_000:  # bounded: a flood is dropped, the devices repeat
            self._inbox.append((kind, item))
        self._wake.set()

    # ------------------------------------------------------------ the engine

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("firmware: engine step failed; retrying")
            await wait_event(self._wake, TICK_S)

    def _online(self, device_id: str) -> bool:
        p = self._presence.get(device_id)
        return p is not None and p.state is PresenceState.ONLINE

    async def _step(self) -> None:
        async with self._lock:
            while self._inbox:
                kind, item = self._inbox.popleft()
                if kind == "ack":
                    await self.transfers.on_ack(*item)
                elif kind == "status":
                    await self._status(*item)
                elif kind == "online":
                    await self.transfers.on_online(item)
                await self._settle()
            await self.transfers.tick(self._online)
            await self._settle()
            for live in list(self._live.values()):
                await self._advance(live)

    async def _status(self, device_id: str, status: Status) -> None:
        """What a device's status says about its update: applied, rolled back, failed."""
        rid = self._device_rollout.get(device_id)
        live = self._live.get(rid) if rid is not None else None
        if live is None or not status.online:
            return
        t = live.targets.get(device_id)
        if t is None or t.final:
            return
        version = live.rollout.version
        last = status.ota.last if status.ota is not None else None
        if (
            last is not None
            and last.t == live.rollout.id
            and last.result
            in (
                "rolled_back",
                "failed",
            )
        ):
            state = TargetState.ROLLED_BACK if last.result == "rolled_back" else TargetState.FAILED
            await self._finish(live, t, state, last.reason or last.result)
        elif status.fw == version and (
            t.state is TargetState.SENDING or last is None or last.t != live.rollout.id
        ):
            why = "" if t.state is TargetState.SENDING else f"already ran {version}"
            await self._finish(live, t, TargetState.APPLIED, why)

    def _on_outcome(self, device_id: str, what: str, reason: str) -> None:
        """From the transfers (inside the engine's step): staged, failed, applied."""
        if what != "staged":  # staged: the status after the switch decides
            self._outcomes.append((device_id, what, reason))

    async def _settle(self) -> None:
        while self._outcomes:
            device_id, what, reason = self._outcomes.pop(0)
            rid = self._device_rollout.get(device_id)
            live = self._live.get(rid) if rid is not None else None
            t = live.targets.get(device_id) if live is not None else None
            if live is None or t is None or t.final:
                continue
            state = TargetState.FAILED if what == "failed" else TargetState.APPLIED
            await self._finish(live, t, state, reason)

    async def _finish(self, live: LiveRollout, t: Target, state: TargetState, reason: str) -> None:
        self.transfers.close(t.device_id)
        at = self._clock()
        done = t.to(state, at, reason)
        if state is TargetState.APPLIED:
            done = _with_progress(done, live.release.size)
        await self._commit(live, None, [done], [self._target_event(live.rollout, done)])
        self._device_rollout.pop(t.device_id, None)
        log.info(
            "firmware: %s %s %s%s",
            t.device_id,
            live.rollout.version,
            state,
            f": {reason}" if reason else "",
        )

    def _target_event(self, r: Rollout, t: Target) -> NewEvent:
        data: dict[str, Any] = {
            "rollout": r.id,
            "version": r.version,
            "state": t.state.value,
            "wave": t.wave,
        }
        if t.reason:
            data["reason"] = t.reason
        return NewEvent(t.updated_ms, FIRMWARE_EVENT_TYPE, t.device_id, data)

    async def _commit(
        self,
        live: LiveRollout,
        rollout: Rollout | None,
        targets: Sequence[Target],
        events: Sequence[NewEvent],
    ) -> None:
        await self._store.save_rollout(rollout, targets, events)
        if rollout is not None:
            live.rollout = rollout
        for t in targets:
            live.targets[t.device_id] = t

    def _retire(self, live: LiveRollout) -> None:
        self._live.pop(live.rollout.id, None)
        for d, rid in list(self._device_rollout.items()):
            if rid == live.rollout.id:
                del self._device_rollout[d]

    async def _advance(self, live: LiveRollout) -> None:
        """Halt on a failing wave, finish when every device has ended, else start the next."""
        r = live.rollout
        online = {d: self._online(d) for d in live.targets}
        if r.state is RolloutState.RUNNING:
            verdict = judge_wave(r, live.targets.values(), online)
            if verdict.halt is not None:
                at = self._clock()
                halted = r.to(RolloutState.HALTED, at, verdict.halt)
                event = self._admin_event(halted, "rollout_halted", at, verdict.halt)
                await self._commit(live, halted, [], [event])
                log.warning("firmware: rollout %d halted: %s", r.id, verdict.halt)
                return
        if r.state is not RolloutState.HALTED and all(t.final for t in live.targets.values()):
            await self._done(live)  # a halted one stays halted until the admin acts
            return
        if r.state is not RolloutState.RUNNING:
            return
        if verdict.advance and r.wave + 1 < len(r.wave_sizes):
            r = dataclasses.replace(r, wave=r.wave + 1, updated_ms=self._clock())
            event = self._admin_event(r, "wave_started", r.updated_ms, f"wave {r.wave + 1}")
            await self._commit(live, r, [], [event])
        await self._start_pending(live, online)

    async def _done(self, live: LiveRollout) -> None:
        r = live.rollout
        at = self._clock()
        bad = [t for t in live.targets.values() if t.state is not TargetState.APPLIED]
        why = ""
        if bad:
            rolled = sum(1 for t in bad if t.state is TargetState.ROLLED_BACK)
            why = f"{len(bad) - rolled} failed, {rolled} rolled back"
        done = r.to(RolloutState.DONE, at, why)
        await self._commit(live, done, [], [self._admin_event(done, "rollout_done", at, why)])
        self._retire(live)
        log.info("firmware: rollout %d of %s done", r.id, r.version)

    async def _start_pending(self, live: LiveRollout, online: Mapping[str, bool]) -> None:
        r = live.rollout
        for t in sorted(live.targets.values(), key=lambda x: (x.wave, x.device_id)):
            if t.wave > r.wave or t.state is not TargetState.PENDING or not online[t.device_id]:
                continue
            if t.device_id not in self._ota:
                continue  # no status seen yet: wait for it
            if self._fw.get(t.device_id) == r.version:
                await self._finish(live, t, TargetState.APPLIED, f"already ran {r.version}")
                continue
            support = self._ota[t.device_id]
            if support is None:
                await self._finish(
                    live,
                    t,
                    TargetState.FAILED,
                    "the device does not take updates (no ota in its status)",
                )
                continue
            if self.transfers.sending() >= self.settings.max_parallel:
                return
            at = self._clock()
            sending = t.to(TargetState.SENDING, at)
            await self._commit(live, None, [sending], [self._target_event(r, sending)])
            session = self.transfers.open(
                t.device_id, r.id, live.release, live.contents, support.chunk
            )
            await self.transfers.offer(session)

    async def _send(self, topic: str, payload: bytes) -> None:
        link = self.link
        if link is None or not link.connected:
            return  # the silence timer offers again once the link is back
        await self._pace()
        await link.publish(topic, payload, qos=1)


def _with_progress(t: Target, size: int) -> Target:
    return dataclasses.replace(t, progress=size)
