"""Presence: online / late / offline / unknown / never seen per device; transitions stored with
time and cause.

Online comes from the retained `status` (online: true) or any message; offline
from the last will (`status` online: false, cause `last_will`), a clean goodbye
(`{"online": false, "reason": "shutdown"}`, cause `shutdown`) or from silence
longer than `max(3 x interval_s, 1.5 x keepalive)`; late after 1.5 intervals
without a message. While the gateway itself is down nobody knows: on start,
devices that were online get an `unknown` transition at the last heartbeat, and
the retained statuses (delivered on subscribe) rebuild the truth. Never
"everyone online". A device never heard from is `never_seen` (not stored: no
stored transition means never seen), never `offline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from planty_broker.domain.models import (
    PresenceCause,
    PresenceState,
    PresenceTransition,
    silence_bound_s,
)
from planty_broker.ports.store import Store
from planty_broker.services.bus import Bus, DevicesChanged, PresenceChanged
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.services.writer import is_transient
from planty_broker.tasks import cancel_and_wait, spawn

if TYPE_CHECKING:
    from planty_broker.services.dead_letters import DeadLetterService

log = logging.getLogger(__name__)

HEARTBEAT_KEY = "gateway.heartbeat_ms"
MAX_PENDING = 100_000  # transitions held while the store cannot take them; then oldest dropped
HEARTBEAT_EVERY_S = 5.0
RESTART_GRACE_S = 5.0  # how long retained statuses get to arrive after a (re)start


@dataclass(slots=True)
class Presence:
    state: PresenceState
    since_ms: int
    cause: PresenceCause
    last_seen_ms: int | None = None
    interval_s: float | None = None


class PresenceService:
    """Tracks presence in memory, persists transitions, publishes PresenceChanged."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        registry: DeviceRegistry,
        *,
        keepalive_s: float,
        default_interval_s: float,
        check_every_s: float = 1.0,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self._keepalive_s = keepalive_s
        self._default_interval_s = default_interval_s
        self._check_every_s = check_every_s
        self._presence: dict[str, Presence] = {}
        self._pending: list[PresenceTransition] = []
        self._max_pending = max_pending
        self.refused = 0  # transitions the store refused for good (set aside)
        self.dead_letters: DeadLetterService | None = None  # set by the gateway
        self.dropped = 0  # transitions never stored: the store was down and the backlog full
        self._flushed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started_ms = 0
        bus.subscribe(DevicesChanged, self._on_devices_changed)

    # False on a cluster instance that does not hold the lease: its view is partial, so it
    # neither stores nor announces transitions (docs/scale-out.md).
    recording = True

    def get(self, device_id: str) -> Presence | None:
        return self._presence.get(device_id)

    def online_count(self) -> int:
        return sum(
            1
            for p in self._presence.values()
            if p.state in (PresenceState.ONLINE, PresenceState.LATE)
        )

    async def start(self) -> None:
        self._started_ms = now_ms()
        last = await self._store.last_presence()
        heartbeat = await self._store.get_meta(HEARTBEAT_KEY)
        down_at = int(heartbeat) if isinstance(heartbeat, (int, float)) else self._started_ms
        for device in self._registry.all():
            prev = last.get(device.id)
            if prev is None:
                self._presence[device.id] = Presence(
                    PresenceState.NEVER_SEEN,
                    device.created_at_ms,
                    PresenceCause.REGISTERED,
                    interval_s=device.interval_s,
                )
            elif prev.state in (PresenceState.ONLINE, PresenceState.LATE):
                # We were down: from the last heartbeat on, nobody knows.
                at = max(prev.at_ms, down_at)
                self._presence[device.id] = Presence(
                    PresenceState.UNKNOWN,
                    at,
                    PresenceCause.GATEWAY_RESTART,
                    interval_s=device.interval_s,
                )
                self._pending.append(
                    PresenceTransition(
                        device.id, PresenceState.UNKNOWN, at, PresenceCause.GATEWAY_RESTART
                    )
                )
            else:
                self._presence[device.id] = Presence(
                    prev.state, prev.at_ms, prev.cause, interval_s=device.interval_s
                )
        await self.flush()
        await self._store.set_meta(HEARTBEAT_KEY, self._started_ms)
        self._tasks = [
            spawn("presence-check", self._check_loop),
            spawn("presence-heartbeat", self._heartbeat_loop),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        await self.flush()
        await self._store.set_meta(HEARTBEAT_KEY, now_ms())

    # ------------------------------------------------------------ inputs

    def on_status(
        self,
        device_id: str,
        online: bool,
        interval_s: float | None,
        at_ms: int,
        *,
        clean: bool = False,
    ) -> None:
        """A status: online, or offline by the last will or (`clean`) by a goodbye."""
        p = self._ensure(device_id)
        if interval_s:
            p.interval_s = interval_s
        if online:
            p.last_seen_ms = at_ms
            self._set(device_id, p, PresenceState.ONLINE, PresenceCause.STATUS_ONLINE, at_ms)
        elif clean:
            self._set(device_id, p, PresenceState.OFFLINE, PresenceCause.SHUTDOWN, at_ms)
        else:
            self._set(device_id, p, PresenceState.OFFLINE, PresenceCause.LAST_WILL, at_ms)

    def on_activity(self, device_id: str, at_ms: int) -> None:
        """Any message (telemetry, ack) proves the device is there."""
        p = self._presence.get(device_id)
        if p is None:
            p = self._ensure(device_id)
        p.last_seen_ms = at_ms
        if p.state is not PresenceState.ONLINE:
            self._set(device_id, p, PresenceState.ONLINE, PresenceCause.MESSAGE, at_ms)

    def mark(self, device_id: str, state: PresenceState, cause: PresenceCause) -> None:
        self._set(device_id, self._ensure(device_id), state, cause, now_ms())

    # ------------------------------------------------------------ internals

    def _ensure(self, device_id: str) -> Presence:
        p = self._presence.get(device_id)
        if p is None:
            p = Presence(PresenceState.NEVER_SEEN, now_ms(), PresenceCause.REGISTERED)
            self._presence[device_id] = p
        return p

    def _set(
        self, device_id: str, p: Presence, state: PresenceState, cause: PresenceCause, at_ms: int
    ) -> None:
        if p.state is state:
            return
        previous = p.state
        p.state, p.since_ms, p.cause = state, at_ms, cause
        t = PresenceTransition(device_id, state, at_ms, cause)
        if not self.recording:  # a cluster instance that does not own presence (scale-out)
            return
        self._pending.append(t)
        if len(self._pending) > self._max_pending:
            self._drop_oldest()
        log.info(
            "device %s is %s (%s)",
            device_id,
            state.value,
            cause.value,
            extra={"device_id": device_id},
        )
        self._bus.publish(PresenceChanged(t, previous.value))

    def _drop_oldest(self) -> None:
        """The store has been down long enough to fill the backlog: the oldest tenth goes
        (counted and logged once per drop). The in-memory state stays exact."""
        n = max(1, self._max_pending // 10)
        del self._pending[:n]
        self.dropped += n
        log.warning(
            "presence: %d transition(s) dropped, never stored (the store has been unavailable "
            "for a while and %d are waiting); %d dropped since start",
            n,
            len(self._pending),
            self.dropped,
        )

    def _on_devices_changed(self, event: DevicesChanged) -> None:
        if event.change == "removed":
            self._presence.pop(event.device_id, None)
        elif event.change == "added":
            self._ensure(event.device_id)

    async def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._store.append_presence(batch)
            except Exception as exc:
                if not is_transient(exc):  # refused for good: one by one, never wedged
                    await self._set_aside(batch)
                    return
                self._pending[:0] = batch  # keep them; retried on the next check
                while len(self._pending) > self._max_pending:
                    self._drop_oldest()
                raise

    async def _set_aside(self, batch: list[PresenceTransition]) -> None:
        """Store what the store takes alone; the rest are refused transitions, counted and
        kept as dead letters when the gateway keeps them (a transient error: kept, retried)."""
        for i, t in enumerate(batch):
            try:
                await self._store.append_presence([t])
            except Exception as exc:
                if is_transient(exc):
                    self._pending[:0] = batch[i:]
                    return
                self.refused += 1
                log.error("presence of %s refused by the store: %s", t.device_id, exc)
                if self.dead_letters is not None:
                    payload = f"{t.state} {t.cause} at {t.at_ms}".encode()
                    with contextlib.suppress(Exception):
                        await self.dead_letters.record(t.device_id, "presence", payload, exc)

    def check(self, at_ms: int) -> None:
        """Apply silence, lateness and the restart grace period at time `at_ms`."""
        grace_over = at_ms - self._started_ms >= RESTART_GRACE_S * 1000
        for device_id, p in self._presence.items():
            if p.state is PresenceState.NEVER_SEEN:
                continue  # until it says something: left out of availability, never offline
            if p.state is PresenceState.UNKNOWN:
                if grace_over and p.last_seen_ms is None:
                    self._set(
                        device_id, p, PresenceState.OFFLINE, PresenceCause.GATEWAY_RESTART, at_ms
                    )
                continue
            if p.state is PresenceState.OFFLINE or p.last_seen_ms is None:
                continue
            silent_ms = at_ms - p.last_seen_ms
            bound = silence_bound_s(p.interval_s, self._keepalive_s, self._default_interval_s)
            if silent_ms > bound * 1000:
                self._set(device_id, p, PresenceState.OFFLINE, PresenceCause.SILENCE, at_ms)
            elif p.state is PresenceState.ONLINE:
                interval = p.interval_s or self._default_interval_s
                if silent_ms > 1.5 * interval * 1000:
                    self._set(device_id, p, PresenceState.LATE, PresenceCause.SILENCE, at_ms)

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self._check_every_s)
            self.check(now_ms())
            try:
                await self.flush()
            except Exception as exc:
                log.warning("cannot store presence transitions yet (%s); will retry", exc)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_S)
            try:
                await self._store.set_meta(HEARTBEAT_KEY, now_ms())
            except Exception as exc:
                log.warning("cannot store the heartbeat (%s); will retry", exc)
