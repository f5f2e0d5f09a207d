"""Fleet statistics: per-device counters, vitals, reconnects, latency and availability.

Fed three ways. The ingest hot path counts into `fleet` (a `FleetStats`)
directly, with no allocation per message. Rare things come over the bus:
device errors, presence changes (kept compactly for exact availability, see
`stats_history.py`) and device removal. Other services call in: ingest calls
`on_status` before presence sees a status (vitals and reconnect causes), the
command outbox calls `command_sent`, `command_final` and `record_rtt`.
Counters and vitals are saved to the store every `snapshot_every_s` and at
stop, so a gateway restart keeps them; latency windows start empty.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from planty_broker.config import StatsSettings
from planty_broker.domain.models import PresenceCause, PresenceState
from planty_broker.domain.stats.availability import Availability
from planty_broker.domain.stats.counters import DeviceStats, FleetStats, ReconnectCause
from planty_broker.domain.stats.windowed import DEFAULT_LAYOUT, HOUR_MS, WEEK_MS, WindowLayout
from planty_broker.ports.store import Store
from planty_broker.protocol import ErrorKind, Status
from planty_broker.services.bus import Bus, DeviceError, DevicesChanged, PresenceChanged
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.services.stats.history import PresenceHistory
from planty_broker.services.stats.views import latency_series, spans_json
from planty_broker.tasks import cancel_and_wait, spawn

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "stats.snapshot"
KEEP_HISTORY_MS = WEEK_MS  # the longest availability window
_TRIM_SLACK_MS = HOUR_MS  # trim a device's history once it holds this much beyond the window
# A device flapping all week keeps at most this many transitions (~9 bytes each); older
# time counts in the state they left in force (availability approximate before them).
MAX_TRANSITIONS = 20_000
_AWAY_CAUSE = {
    PresenceCause.LAST_WILL: ReconnectCause.LAST_WILL,
    PresenceCause.SILENCE: ReconnectCause.SILENCE,
    PresenceCause.GATEWAY_RESTART: ReconnectCause.GATEWAY_RESTART,
    PresenceCause.SHUTDOWN: ReconnectCause.SHUTDOWN,
}
_VITALS = ("boot", "fw", "heap", "rssi", "uptime_s", "vitals_ms")
_TIMES = ("since_ms", "last_message_ms", "last_error_ms")


class StatsService:
    """Owns the `FleetStats` and the presence histories; start/stop like every service."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        registry: DeviceRegistry,
        presence: PresenceService,
        settings: StatsSettings | None = None,
        *,
        layout: WindowLayout = DEFAULT_LAYOUT,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._registry = registry
        self._presence = presence
        self._settings = settings or StatsSettings()
        self._clock = clock
        self.layout = layout
        self.fleet = FleetStats(clock(), layout)
        self.history: dict[str, PresenceHistory] = {}
        self.unattributed: dict[str, int] = {}  # errors of no registered device, by kind
        self._away: dict[str, ReconnectCause] = {}  # devices offline: what ended the session
        self._loaded: set[str] = set()
        self._summaries: dict[str, tuple[float, dict[str, Any]]] = {}
        self.history_trimmed = 0  # transitions forgotten early by the per-device bound
        self._tasks: list[asyncio.Task[None]] = []
        self.backfilled = asyncio.Event()
        self._started_ms = clock()
        bus.subscribe(PresenceChanged, self._on_presence)
        bus.subscribe(DeviceError, self._on_error)
        bus.subscribe(DevicesChanged, self._on_devices_changed)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Restore saved counters, then backfill presence histories from the store (background)."""
        now = self._started_ms = self._clock()
        for device in self._registry.all():
            self.fleet.device(device.id, now)
            self.history.setdefault(device.id, PresenceHistory())
        await self._restore()
        self._tasks = [
            asyncio.create_task(self._backfill(), name="stats-backfill"),
            spawn("stats-snapshot", self._snapshot_loop),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        try:
            await self.save()
        except Exception as exc:
            log.warning("could not save the statistics counters at stop: %s", exc)

    # ------------------------------------------------------------ inputs from other services

    def on_status(self, device_id: str, status: Status, retained: bool, at_ms: int) -> None:
        """A status arrived (ingest calls this before presence sees it): vitals, reconnects."""
        s = self.fleet.device(device_id, at_ms)
        self._summaries.pop(device_id, None)  # vitals or reconnects change: no stale summary
        if not status.online:
            return
        p = self._presence.get(device_id)
        prior = p.state if p is not None else PresenceState.UNKNOWN
        cause: ReconnectCause | None = None
        if status.boot is not None and s.boot is not None and status.boot != s.boot:
            cause = ReconnectCause.REBOOT
        elif prior is PresenceState.OFFLINE:
            cause = self._away.get(device_id, ReconnectCause.OTHER)
        elif (
            prior is PresenceState.UNKNOWN
            and not retained
            and s.vitals_ms is not None
            and s.vitals_ms < self._started_ms
        ):
            # Known from before our start, and a live (not replayed) status while we did not
            # know its state: it reconnected while the gateway (or its MQTT server) was down.
            cause = ReconnectCause.GATEWAY_RESTART
        if cause is not None:
            s.reconnect(cause)
            self._away.pop(device_id, None)
        s.vitals(
            at_ms,
            rssi=status.rssi,
            heap=status.heap,
            uptime_s=status.uptime_s,
            fw=status.fw,
            boot=status.boot,
        )

    def record_rtt(self, device_id: str, ms: float, now_ms: int | None = None) -> None:
        """A ping or command ack round trip of `ms` (the command outbox calls this)."""
        at = self._clock() if now_ms is None else now_ms
        if device_id in self._registry:
            self.fleet.device(device_id, at).round_trip(ms, at)
            self._summaries.pop(device_id, None)

    def command_sent(self, device_id: str, nbytes: int) -> None:
        """A command (or a re-send) was published to the device."""
        if device_id in self._registry:
            s = self.fleet.device(device_id, self._clock())
            s.message_out(nbytes)
            s.command_sent()

    def command_final(self, device_id: str, state: str) -> None:
        """A command reached a final state (acked, failed, expired, cancelled, superseded)."""
        if device_id in self._registry:
            self.fleet.device(device_id, self._clock()).command_final(state)

    def _on_error(self, event: DeviceError) -> None:
        try:
            kind = ErrorKind(event.kind)
        except ValueError:
            kind = None
        if event.device_id is not None and kind is not None and event.device_id in self._registry:
            self.fleet.device(event.device_id, event.at_ms).error(kind, event.at_ms)
            self._summaries.pop(event.device_id, None)
        else:
            self.unattributed[event.kind] = self.unattributed.get(event.kind, 0) + 1

    def _on_presence(self, event: PresenceChanged) -> None:
        t = event.transition
        h = self.history.get(t.device_id)
        if h is None:
            if t.device_id not in self._registry:
                return
            h = self.history[t.device_id] = PresenceHistory()
        h.add(t.at_ms, t.state, t.cause)
        self._summaries.pop(t.device_id, None)
        oldest = h.oldest_ms
        if oldest is not None and oldest < t.at_ms - KEEP_HISTORY_MS - _TRIM_SLACK_MS:
            h.trim(t.at_ms - KEEP_HISTORY_MS)
        if len(h) > MAX_TRANSITIONS + MAX_TRANSITIONS // 10:
            self.history_trimmed += h.keep_newest(MAX_TRANSITIONS)
        if t.state is PresenceState.OFFLINE:
            self._away[t.device_id] = _AWAY_CAUSE.get(t.cause, ReconnectCause.OTHER)
        elif (
            t.state is PresenceState.ONLINE
            and t.cause is PresenceCause.MESSAGE
            and event.previous == PresenceState.OFFLINE.value
        ):
            # Back without a status (a status would have come first): it had gone quiet.
            cause = self._away.pop(t.device_id, ReconnectCause.OTHER)
            self.fleet.device(t.device_id, t.at_ms).reconnect(cause)

    def _on_devices_changed(self, event: DevicesChanged) -> None:
        device_id = event.device_id
        if event.change == "removed":
            self.fleet.remove(device_id)
            self.history.pop(device_id, None)
            self._away.pop(device_id, None)
            self._summaries.pop(device_id, None)
            self._loaded.discard(device_id)
        elif event.change == "added":
            self.fleet.device(device_id, self._clock())
            self.history.setdefault(device_id, PresenceHistory())
            self._loaded.add(device_id)  # a new device has no stored history

    # ------------------------------------------------------------ presence history

    async def ensure_loaded(self, device_id: str) -> None:
        """Make the device's presence history complete (read from the store once)."""
        if device_id in self._loaded or device_id not in self._registry:
            return
        now = self._clock()
        cutoff = now - KEEP_HISTORY_MS
        rows = await self._store.presence_history(device_id, cutoff, None)
        before: PresenceState | None = None
        if not rows or rows[0].at_ms > cutoff:
            older = await self._store.presence_history(device_id, None, cutoff)
            before = older[-1].state if older else None
        h = self.history.setdefault(device_id, PresenceHistory())
        h.load(rows, before)
        h.trim(cutoff)
        self.history_trimmed += h.keep_newest(MAX_TRANSITIONS)
        self._loaded.add(device_id)

    async def _backfill(self) -> None:
        started = time.monotonic()
        for device in self._registry.all():
            try:
                await self.ensure_loaded(device.id)
            except Exception as exc:
                log.warning(
                    "cannot read the presence history of %s yet: %s; availability covers "
                    "only what was seen since start",
                    device.id,
                    exc,
                    extra={"device_id": device.id},
                )
        self.backfilled.set()
        log.debug("presence histories loaded in %.2f s", time.monotonic() - started)

    # ------------------------------------------------------------ queries

    def device(self, device_id: str) -> DeviceStats | None:
        return self.fleet.get(device_id)

    def availability(self, device_id: str, window_ms: int, now: int) -> Availability:
        h = self.history.get(device_id)
        if h is None:
            return Availability(now - window_ms, now, unknown_ms=window_ms)
        return h.availability(device_id, max(now - window_ms, 0), now)

    def device_stats(
        self, device_id: str, window_ms: int, now: int | None = None
    ) -> dict[str, Any]:
        """Everything about one device over a window: counters, latency, availability, timeline."""
        at = self._clock() if now is None else now
        s = self.fleet.device(device_id, at)
        out = s.snapshot(at, window_ms)
        out["availability"] = self.availability(device_id, window_ms, at).as_dict()
        h = self.history.get(device_id)
        out["timeline"] = spans_json(h.spans(device_id, at - window_ms, at) if h else [])
        out["latency_series"] = latency_series(s.latency, window_ms, at)
        return out

    def fleet_stats(self, window_ms: int, now: int | None = None) -> dict[str, Any]:
        """Fleet totals, presence by state, fleet availability and latency over a window."""
        at = self._clock() if now is None else now
        out = self.fleet.snapshot(at, window_ms)
        start = at - window_ms
        parts = [
            h.availability(i, start, at)
            for i, h in self.history.items()
            if not self._never_seen(i)  # left out of availability (no time known at all)
        ]
        out["availability"] = Availability.total(parts, start, at).as_dict()
        by_state = dict.fromkeys((s.value for s in PresenceState), 0)
        for device in self._registry.all():
            p = self._presence.get(device.id)
            by_state[(p.state if p else PresenceState.UNKNOWN).value] += 1
        out["presence"] = by_state
        out["unattributed_errors"] = dict(self.unattributed)
        out["latency_series"] = latency_series(self.fleet.latency, window_ms, at)
        return out

    def _never_seen(self, device_id: str) -> bool:
        p = self._presence.get(device_id)
        return p is not None and p.state is PresenceState.NEVER_SEEN

    def device_summary(self, device_id: str) -> dict[str, Any]:
        """A few figures for the device list: the `stats` key. Reused for `summary_cache_s`
        unless an error, a status, a presence change or a round trip came in meanwhile."""
        t = time.monotonic()
        cached = self._summaries.get(device_id)
        if cached is not None and t - cached[0] < self._settings.summary_cache_s:
            return cached[1]
        s = self.fleet.get(device_id)
        if s is None:
            return {"stats": None}
        at = self._clock()
        hour = s.latency.window(HOUR_MS, at) if not s.latency.is_empty() else None
        p99 = hour.quantile(0.99) if hour is not None else None
        errors = s.errors()
        summary = {
            "stats": {
                "availability_1h": self.availability(device_id, HOUR_MS, at).share,
                "latency_p99_ms_1h": p99,
                "latency_count_1h": hour.count if hour is not None else 0,
                "latency_max_ms_1h": hour.max if hour is not None else None,
                "errors_total": sum(errors.values()),
                "reconnects_total": sum(s.reconnects().values()),
                "messages_out": s.msgs_out,
                "rssi": s.rssi,
                "heap": s.heap,
                "uptime_s": s.uptime_s,
                "boot": s.boot,
            }
        }
        self._summaries[device_id] = (t, summary)
        return summary

    # ------------------------------------------------------------ persistence

    def _snapshot(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for device_id, s in self.fleet.items():
            saved: dict[str, Any] = {k: v for k, v in s.counters().items() if v}
            for name in (*_VITALS, *_TIMES):
                value = getattr(s, name)
                if value is not None:
                    saved[name] = value
            devices[device_id] = saved
        return {"saved_ms": self._clock(), "devices": devices, "unattributed": self.unattributed}

    async def save(self) -> None:
        await self._store.set_meta(SNAPSHOT_KEY, self._snapshot())

    async def _restore(self) -> None:
        try:
            saved = await self._store.get_meta(SNAPSHOT_KEY)
        except Exception as exc:
            log.warning("cannot read the saved statistics (%s); counting from zero", exc)
            return
        if not isinstance(saved, dict):
            return
        for device_id, values in (saved.get("devices") or {}).items():
            s = self.fleet.get(device_id)
            if s is None or not isinstance(values, dict):
                continue  # removed meanwhile
            s.restore_counters(values)
            for name in (*_VITALS, *_TIMES):
                if values.get(name) is not None:
                    setattr(s, name, values[name])
        for kind, n in (saved.get("unattributed") or {}).items():
            if isinstance(n, int):
                self.unattributed[kind] = self.unattributed.get(kind, 0) + n

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.snapshot_every_s)
            try:
                await self.save()
            except Exception as exc:
                log.warning("cannot save the statistics counters (%s); will retry", exc)
            cutoff = self._clock() - KEEP_HISTORY_MS
            for h in self.history.values():
                h.trim(cutoff)
