"""Device-to-gateway path: every MQTT message from a device enters here.

decode at the edge (protocol.py) -> unknown devices and bad payloads counted,
never a crash -> presence updated -> readings stored in batches (the PUBACK is
sent from the batch's commit, so it follows durability) -> events published on
the bus. Telemetry, the hot path, is handled without a task or a future per
message; status and acks (rare) run as a task each and are acknowledged when done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import Histogram

from planty_broker.domain.models import Reading
from planty_broker.ports.store import Store
from planty_broker.protocol import (
    SHUTDOWN_REASON,
    Channel,
    ErrorKind,
    ProtocolError,
    Topics,
    decode_ack,
    decode_status,
    decode_telemetry,
)
from planty_broker.protocol_ota import OtaAck, decode_ota_ack
from planty_broker.services.bus import (
    AckReceived,
    Bus,
    DeviceError,
    DevicesChanged,
    DeviceStatusReceived,
    ReadingObserved,
    ReadingStored,
)
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.services.writer import BatchWriter

if TYPE_CHECKING:
    from planty_broker.services.stats.service import StatsService

# Seconds; a batch commit on SQLite takes ~1-20 ms, a stalled disk or remote database far more.
STORE_WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def store_write_histogram(buckets: tuple[float, ...] = STORE_WRITE_BUCKETS) -> Histogram:
    """How long one reading batch commit takes, for /metrics (not in any global registry:
    /metrics collects it from the running ingest service)."""
    return Histogram(
        "planty_store_write_seconds",
        "Duration of one reading batch commit",
        buckets=buckets,
        registry=None,
    )


log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0  # a given (device, error kind) is logged at most once a minute

AckHandler = Callable[[AckReceived], Awaitable[None]]
OtaHandler = Callable[[str, OtaAck, int], None]  # device id, the ack, arrival (unix ms)
Ack = Callable[[], None]  # sends the MQTT PUBACK of the message being handled


class IngestService:
    """Handles every device message delivered by the MQTT link."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        registry: DeviceRegistry,
        presence: PresenceService,
        topics: Topics,
        *,
        max_payload_bytes: int,
        batch_max: int = 500,
        batch_wait_ms: float = 5.0,
        stats: StatsService | None = None,
    ) -> None:
        """`stats` None: no per-device statistics (errors still go out as `DeviceError`)."""
        self._store = store
        self._stats = stats
        self._stats_of = stats.fleet.device if stats is not None else None  # bound once
        self._bus = bus
        self._registry = registry
        self._presence = presence
        self._topics = topics
        self._max_payload = max_payload_bytes
        self.store_write_seconds = store_write_histogram()  # per batch commit, for /metrics
        self.writer: BatchWriter[Reading] = BatchWriter(
            self._append_timed,
            max_batch=batch_max,
            max_wait_ms=batch_wait_ms,
            name="readings",
            after_commit=self._committed,
        )
        self.latest: dict[str, Reading] = {}
        self.unknown_device_messages = 0
        self.bad_topic_messages = 0
        self.ack_handler: AckHandler | None = None
        self.ota_handler: OtaHandler | None = None  # the firmware service, when it runs
        self._last_logged: dict[tuple[str | None, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        bus.subscribe(DevicesChanged, self._on_devices_changed)

    async def start(self) -> None:
        self.latest = await self._store.latest_readings()
        await self.writer.start()

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        await self.writer.stop()

    def _on_devices_changed(self, event: DevicesChanged) -> None:
        if event.change == "removed":
            self.latest.pop(event.device_id, None)

    # ------------------------------------------------------------ the handler

    def handle(self, topic: str, payload: bytes, retain: bool, ack: Ack) -> None:
        """MQTT message handler: never raises for bad input; calls `ack` once it is safe."""
        try:
            parsed = self._topics.parse(topic)
        except ProtocolError as exc:
            self.bad_topic_messages += 1
            self._report(None, exc.kind, str(exc))
            ack()
            return
        device_id = parsed.device_id
        if device_id not in self._registry:
            self.unknown_device_messages += 1
            if not (parsed.channel is Channel.STATUS and retain):
                self._report(
                    device_id,
                    ErrorKind.UNKNOWN_DEVICE,
                    f"message on {topic} from an unknown device",
                )
            ack()
            return
        at = now_ms()
        stats_of = self._stats_of
        if stats_of is not None:  # counting allocates nothing (slotted ints)
            stats_of(device_id, at).message_in(len(payload), at)
        channel = parsed.channel
        if channel is Channel.TELEMETRY:
            try:
                tel, dropped = decode_telemetry(payload, self._max_payload)
            except ProtocolError as exc:
                self._report(device_id, exc.kind, str(exc))
                ack()
                return
            if dropped:
                self._report(
                    device_id,
                    ErrorKind.BAD_READING,
                    f"non-numeric value for {', '.join(dropped)}; kept the rest",
                )
            self._presence.on_activity(device_id, at)
            self.writer.submit(Reading(device_id, tel.seq, tel.ts or at, at, tel.readings), ack)
        elif channel is Channel.STATUS or channel is Channel.ACK:
            task = asyncio.get_running_loop().create_task(
                self._slow(channel, device_id, payload, at, retain, ack)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif channel is Channel.OTA_ACK:  # an update's progress: small, handled at once
            self._presence.on_activity(device_id, at)
            try:
                msg = decode_ota_ack(payload, self._max_payload)
            except ProtocolError as exc:
                self._report(device_id, exc.kind, str(exc))
            else:
                if self.ota_handler is not None:
                    self.ota_handler(device_id, msg, at)
            ack()
        else:  # `cmd` and `ota` are our own outbound channels; a device cannot publish there
            ack()

    def observe(self, topic: str, payload: bytes, retain: bool, ack: Ack) -> None:
        """Scale-out, on the lease holder: a copy of a telemetry message that some instance
        stores. Presence and the rules see it (`ReadingObserved`); nothing is stored here."""
        try:
            parsed = self._topics.parse(topic)
            if parsed.channel is Channel.TELEMETRY and parsed.device_id in self._registry:
                tel, _ = decode_telemetry(payload, self._max_payload)
                at = now_ms()
                self._presence.on_activity(parsed.device_id, at)
                reading = Reading(parsed.device_id, tel.seq, tel.ts or at, at, tel.readings)
                self._bus.publish(ReadingObserved(reading))
        except ProtocolError:
            pass  # counted by the instance that stores it
        ack()

    async def _append_timed(self, readings: Sequence[Reading]) -> None:
        started = time.perf_counter()
        await self._store.append_readings(readings)
        self.store_write_seconds.observe(time.perf_counter() - started)

    def _committed(self, readings: Sequence[Reading]) -> None:
        """After a batch commit: counters, latest values, ReadingStored events."""
        latest, publish = self.latest, self._bus.publish
        get_stats = self._stats.fleet.get if self._stats is not None else None
        for r in readings:
            if get_stats is not None:
                s = get_stats(r.device_id)
                if s is not None:
                    s.reading(len(r.values))
            prev = latest.get(r.device_id)
            if prev is None or r.ts_ms >= prev.ts_ms:
                latest[r.device_id] = r
            publish(ReadingStored(r))

    async def _slow(
        self, channel: Channel, device_id: str, payload: bytes, at: int, retain: bool, ack: Ack
    ) -> None:
        try:
            if channel is Channel.STATUS:
                await self._status(device_id, payload, at, retain)
            else:
                await self._ack(device_id, payload, at)
        except ProtocolError as exc:
            self._report(device_id, exc.kind, str(exc))
        except Exception:
            # e.g. the store is down: no PUBACK, so the MQTT server redelivers it later
            log.exception("could not handle %s from %s; it will be redelivered", channel, device_id)
            return
        ack()

    async def _status(self, device_id: str, payload: bytes, at: int, retain: bool) -> None:
        status = decode_status(payload, self._max_payload)
        if self._stats is not None:  # before presence: it reads the state the device comes from
            self._stats.on_status(device_id, status, retain, at)
        self._presence.on_status(
            device_id,
            status.online,
            status.interval_s,
            at,
            clean=status.reason == SHUTDOWN_REASON,
        )
        await self._registry.note_status(device_id, status)
        self._bus.publish(DeviceStatusReceived(device_id, status.online, at, status))

    async def _ack(self, device_id: str, payload: bytes, at: int) -> None:
        ack = decode_ack(payload, self._max_payload)
        self._presence.on_activity(device_id, at)
        event = AckReceived(device_id, ack.id, ack.ok, ack.result, ack.error, at)
        if self.ack_handler is not None:
            await self.ack_handler(event)
        self._bus.publish(event)

    def _report(self, device_id: str | None, kind: ErrorKind, message: str) -> None:
        self._bus.publish(DeviceError(device_id, kind.value, message, now_ms()))
        key = (device_id, kind.value)
        t = time.monotonic()
        if t - self._last_logged.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            if len(self._last_logged) > 10_000:  # bounded, whatever a misbehaving fleet sends
                self._last_logged.clear()
            self._last_logged[key] = t
            log.warning(
                "device %s: %s: %s (further ones counted, logged at most once a minute)",
                device_id or "?",
                kind.value,
                message,
                extra={"device_id": device_id},
            )
