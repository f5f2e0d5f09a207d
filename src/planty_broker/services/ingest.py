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
from dataclasses import dataclass, field

from planty_broker.domain.models import Reading
from planty_broker.protocol import (
    Channel,
    ErrorKind,
    ProtocolError,
    Topics,
    decode_ack,
    decode_status,
    decode_telemetry,
)
from planty_broker.services.bus import (
    AckReceived,
    Bus,
    DeviceError,
    DevicesChanged,
    DeviceStatusReceived,
    ReadingStored,
)
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.services.writer import BatchWriter
from planty_broker.storage.port import Store

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0  # a given (device, error kind) is logged at most once a minute

AckHandler = Callable[[AckReceived], Awaitable[None]]
Ack = Callable[[], None]  # sends the MQTT PUBACK of the message being handled


@dataclass(slots=True)
class DeviceCounters:
    """Message and error counts of one device (issue 7 extends these into full stats)."""

    messages_in: int = 0
    bytes_in: int = 0
    readings: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_message_ms: int | None = None
    last_seq: int | None = None

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


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
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self._presence = presence
        self._topics = topics
        self._max_payload = max_payload_bytes
        self.writer: BatchWriter[Reading] = BatchWriter(
            store.append_readings,
            max_batch=batch_max,
            max_wait_ms=batch_wait_ms,
            name="readings",
            after_commit=self._committed,
        )
        self.counters: dict[str, DeviceCounters] = {}
        self.latest: dict[str, Reading] = {}
        self.unknown_device_messages = 0
        self.bad_topic_messages = 0
        self.ack_handler: AckHandler | None = None
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

    def counters_for(self, device_id: str) -> DeviceCounters:
        c = self.counters.get(device_id)
        if c is None:
            c = self.counters[device_id] = DeviceCounters()
        return c

    def _on_devices_changed(self, event: DevicesChanged) -> None:
        if event.change == "removed":
            self.counters.pop(event.device_id, None)
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
        c = self.counters.get(device_id) or self.counters_for(device_id)
        c.messages_in += 1
        c.bytes_in += len(payload)
        c.last_message_ms = at
        channel = parsed.channel
        if channel is Channel.TELEMETRY:
            try:
                tel, dropped = decode_telemetry(payload, self._max_payload)
            except ProtocolError as exc:
                self._device_error(device_id, c, exc)
                ack()
                return
            if dropped:
                c.error(ErrorKind.BAD_READING.value)
                self._report(
                    device_id,
                    ErrorKind.BAD_READING,
                    f"non-numeric value for {', '.join(dropped)}; kept the rest",
                )
            self._presence.on_activity(device_id, at)
            self.writer.submit(Reading(device_id, tel.seq, tel.ts or at, at, tel.readings), ack)
        elif channel is Channel.STATUS or channel is Channel.ACK:
            task = asyncio.get_running_loop().create_task(
                self._slow(channel, device_id, payload, at, c, ack)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:  # `cmd` is our own outbound channel; a device cannot publish there (ACL)
            ack()

    def _committed(self, readings: Sequence[Reading]) -> None:
        """After a batch commit: counters, latest values, ReadingStored events."""
        latest, counters, publish = self.latest, self.counters, self._bus.publish
        for r in readings:
            c = counters.get(r.device_id)
            if c is not None:
                c.readings += 1
                c.last_seq = r.seq
            prev = latest.get(r.device_id)
            if prev is None or r.ts_ms >= prev.ts_ms:
                latest[r.device_id] = r
            publish(ReadingStored(r))

    async def _slow(
        self, channel: Channel, device_id: str, payload: bytes, at: int, c: DeviceCounters, ack: Ack
    ) -> None:
        try:
            if channel is Channel.STATUS:
                await self._status(device_id, payload, at)
            else:
                await self._ack(device_id, payload, at)
        except ProtocolError as exc:
            self._device_error(device_id, c, exc)
        except Exception:
            # e.g. the store is down: no PUBACK, so the MQTT server redelivers it later
            log.exception("could not handle %s from %s; it will be redelivered", channel, device_id)
            return
        ack()

    def _device_error(self, device_id: str, c: DeviceCounters, exc: ProtocolError) -> None:
        c.error(exc.kind.value)
        self._report(device_id, exc.kind, str(exc))

    async def _status(self, device_id: str, payload: bytes, at: int) -> None:
        status = decode_status(payload, self._max_payload)
        self._presence.on_status(device_id, status.online, status.interval_s, at)
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
