"""Device-to-gateway path: every MQTT message from a device enters here.

decode at the edge (protocol.py) -> unknown devices and bad payloads counted,
never a crash -> presence updated -> readings stored in batches (the PUBACK is
sent from the batch's commit, so it follows durability) -> events published on
the bus. Telemetry, the hot path, is handled without a task or a future per
message; status and acks (rare) wait in one bounded queue served by a few workers
and are acknowledged when done. A status that changes what the device declared is
written in batches too (`statuses`, one transaction per batch, issue 17): a fleet that
logs in at once costs a few commits, not one per device, and its PUBACK and
`DeviceStatusReceived` follow the commit.

Nothing one device sends can stop the others (issue 11): a reading the store refuses
for good is bisected out of its batch and kept as a dead letter, then acknowledged; a
status or ack whose handling fails is retried while the store is unavailable
(transient: held, not acknowledged) and set aside as a dead letter when it can never
succeed. QoS 0 messages (nothing to acknowledge, so no MQTT window bounds them) are
dropped, counted, once `max_pending_qos0` of them wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Histogram

from planty_broker.backoff import Backoff
from planty_broker.domain.models import Reading
from planty_broker.errors import PlantyError, TransientStoreError
from planty_broker.ports.link import no_ack
from planty_broker.ports.store import Store
from planty_broker.protocol import (
    SHUTDOWN_REASON,
    Channel,
    ErrorKind,
    ProtocolError,
    Telemetry,
    Topics,
    decode_ack,
    decode_status,
    decode_telemetry,
    encode,
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
from planty_broker.tasks import cancel_and_wait, spawn

if TYPE_CHECKING:
    from planty_broker.domain.stats.counters import DeviceStats
    from planty_broker.services.dead_letters import DeadLetterService
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
SLOW_WORKERS = 4  # status and ack messages handled at once
SLOW_RETRY_MAX_S = 5.0  # backoff cap while the store is unavailable for a status or ack

AckHandler = Callable[[AckReceived], Awaitable[None]]
OtaHandler = Callable[[str, OtaAck, int], None]  # device id, the ack, arrival (unix ms)
Ack = Callable[[], None]  # sends the MQTT PUBACK of the message being handled


@dataclass(frozen=True, slots=True)
class _StatusWrite:
    """A status on its way to the store: the fields it changes (empty: none, it only keeps
    its place in the order) and the event that follows its commit."""

    device_id: str
    changes: dict[str, object]
    event: DeviceStatusReceived


@dataclass(frozen=True, slots=True)
class _SlowItem:
    """A status or ack message waiting for a worker."""

    channel: Channel
    device_id: str
    topic: str
    payload: bytes
    at: int
    retain: bool
    ack: Ack


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
        dead_letters: DeadLetterService | None = None,
        max_pending_qos0: int = 10_000,
    ) -> None:
        """`stats` None: no per-device statistics (errors still go out as `DeviceError`).
        `dead_letters` None: what the store refuses for good is logged and dropped."""
        self._store = store
        self._stats = stats
        self._stats_of = stats.fleet.device if stats is not None else None  # bound once
        # count_copies: counted from the control queue's copies, not after the commit
        self._copies_of: Callable[[str, int], DeviceStats] | None = None
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
            dead_letter=self._dead_reading,
        )
        # What statuses declare (sensors, actuators, fw, interval), a batch per commit: the
        # fleet's logins used to be one commit each on the store's one thread, ahead of readings
        self.statuses: BatchWriter[_StatusWrite] = BatchWriter(
            self._write_statuses,
            max_batch=batch_max,
            max_wait_ms=batch_wait_ms,
            name="statuses",
            after_commit=self._statuses_committed,
            dead_letter=self._dead_status,
        )
        self.dead_letters = dead_letters
        self._max_pending_qos0 = max_pending_qos0
        self.dropped_qos0 = 0  # QoS 0 messages dropped because too many waited
        self.slow_dead_lettered = 0  # status and ack messages set aside
        self.slow_retries = 0  # status and ack attempts that failed transiently
        self._slow: asyncio.Queue[_SlowItem] = asyncio.Queue()
        self._slow_qos0 = 0  # QoS 0 entries in `_slow`
        self._slow_busy = 0
        self._slow_busy_since = 0.0  # time.monotonic() when status/acks started to wait
        self._slow_done_at = 0.0  # time.monotonic() of the last status/ack handled
        self.latest: dict[str, Reading] = {}
        self.unknown_device_messages = 0
        self.duplicates = 0  # readings delivered again (or removed devices'), not stored
        self.bad_topic_messages = 0
        self.ack_handler: AckHandler | None = None
        # the command service's synchronous ack path (None where it does not run here, e.g. a
        # scale-out worker): True = taken, `done()` follows the commit; False = use the queue
        self.ack_fast: Callable[[AckReceived, Callable[[], None]], bool] | None = None
        self.ota_handler: OtaHandler | None = None  # the firmware service, when it runs
        self._last_logged: dict[tuple[str | None, str], float] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._draining = False  # a clean stop began: new messages are left unacknowledged
        bus.subscribe(DevicesChanged, self._on_devices_changed)

    async def start(self) -> None:
        self.latest = await self._store.latest_readings()
        await self.writer.start()
        await self.statuses.start()
        self._workers = [spawn(f"ingest-slow-{i}", self.slow_worker) for i in range(SLOW_WORKERS)]

    async def drain(self) -> None:
        """A clean stop, while the MQTT link is still open: take no new message (one that
        arrives now is not acknowledged, so the MQTT server delivers it again after the
        restart), finish the status and acks waiting, and commit the readings waiting, so
        that their PUBACKs go out before the link closes (else they are delivered again)."""
        self._draining = True
        await self.stop()

    async def stop(self) -> None:
        if not self._slow.empty() or self._slow_busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slow.join(), 5)
        await cancel_and_wait(self._workers)
        self._workers = []
        await self.statuses.stop()
        await self.writer.stop()

    def slow_pending(self) -> int:
        """Status and ack messages waiting or being handled (statuses until committed)."""
        return self._slow.qsize() + self._slow_busy + self.statuses.total_pending()

    def total_pending(self) -> int:
        return self.writer.total_pending() + self.slow_pending()

    def stuck_for(self, now: float) -> float:
        """Seconds messages have waited with nothing committed or handled (0: none wait)."""
        slow = 0.0
        if self._slow.qsize() or self._slow_busy:
            slow = now - max(self._slow_busy_since, self._slow_done_at)
        return max(self.writer.stuck_for(now), self.statuses.stuck_for(now), slow)

    def _on_devices_changed(self, event: DevicesChanged) -> None:
        if event.change == "removed":
            self.latest.pop(event.device_id, None)

    # ------------------------------------------------------------ the handler

    def handle(self, topic: str, payload: bytes, retain: bool, ack: Ack) -> None:
        """MQTT message handler: never raises for bad input; calls `ack` once it is safe."""
        if self._draining:
            return  # stopping: not acknowledged, delivered again after the restart
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
            if ack is no_ack and self.writer.pending() >= self._max_pending_qos0:
                self.dropped_qos0 += 1  # QoS 0: nothing bounds these but us
                return
            self._presence.on_activity(device_id, at)
            reading = Reading(device_id, tel.seq, tel.ts or at, at, tel.readings, tel.boot)
            self.writer.submit(reading, ack, payload)
        elif channel is Channel.ACK and self.ack_fast is not None:
            self._ack_at_once(_SlowItem(channel, device_id, topic, payload, at, retain, ack))
        elif channel is Channel.STATUS or channel is Channel.ACK:
            self._enqueue_slow(_SlowItem(channel, device_id, topic, payload, at, retain, ack))
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

    def count_copies(self, stats: StatsService) -> None:
        """Scale-out, on the lease holder: statistics are counted here, once per message,
        from the control queue (every status, ack and a copy of every reading), whichever
        instance stores the reading; never on the competitive path, which sees only a share."""
        self._stats = stats
        self._stats_of = None
        self._copies_of = stats.fleet.device

    def count_control(self, topic: str, payload: bytes) -> None:
        """A control-queue message other than a telemetry copy (status, acks): counted in."""
        count = self._copies_of
        if count is None:
            return
        with contextlib.suppress(ProtocolError):
            device_id = self._topics.parse(topic).device_id
            if device_id in self._registry:
                at = now_ms()
                count(device_id, at).message_in(len(payload), at)

    def observe(self, topic: str, payload: bytes, retain: bool, ack: Ack) -> None:
        """Scale-out, on the lease holder: a copy of a telemetry message that some instance
        stores. Presence and the rules see it (`ReadingObserved`), the statistics count it
        (`count_copies`); nothing is stored here."""
        if self._draining:
            return
        count = self._copies_of
        try:
            parsed = self._topics.parse(topic)
            if parsed.channel is Channel.TELEMETRY and parsed.device_id in self._registry:
                at = now_ms()
                stats = count(parsed.device_id, at) if count is not None else None
                if stats is not None:
                    stats.message_in(len(payload), at)
                try:
                    tel, _ = decode_telemetry(payload, self._max_payload)
                except ProtocolError as exc:
                    if stats is not None:  # reported (event log) by the instance storing it
                        stats.error(exc.kind, at)
                    raise
                if stats is not None:
                    stats.reading(len(tel.readings))
                self._presence.on_activity(parsed.device_id, at)
                reading = Reading(
                    parsed.device_id, tel.seq, tel.ts or at, at, tel.readings, tel.boot
                )
                self._bus.publish(ReadingObserved(reading))
        except ProtocolError:
            pass  # reported by the instance that stores it
        ack()

    async def _append_timed(self, readings: Sequence[Reading]) -> list[Reading]:
        """Store a batch; returns the readings stored now (not those stored before)."""
        started = time.perf_counter()
        stored = await self._store.append_readings(readings)
        self.store_write_seconds.observe(time.perf_counter() - started)
        self.duplicates += len(readings) - len(stored)
        return stored

    def _committed(self, readings: Sequence[Reading]) -> None:
        """After a batch commit, for the readings stored now (a duplicate is only
        acknowledged): counters, latest values, ReadingStored events."""
        latest, publish = self.latest, self._bus.publish
        counted = self._stats if self._copies_of is None else None
        get_stats = counted.fleet.get if counted is not None else None
        for r in readings:
            if get_stats is not None:
                s = get_stats(r.device_id)
                if s is not None:
                    s.reading(len(r.values))
            prev = latest.get(r.device_id)
            if prev is None or r.ts_ms >= prev.ts_ms:
                latest[r.device_id] = r
            publish(ReadingStored(r))

    def _ack_at_once(self, item: _SlowItem) -> None:
        """A command ack without a worker (issue 17): four workers each waiting for a commit
        capped acks at ~4 per commit time (~550/s). `ack_fast` takes the plain cases and
        calls back once the outcome is committed (then AckReceived, then the PUBACK, as the
        workers do); the rest (unknown ids, credential deliveries, `read`s) go to them."""
        fast = self.ack_fast
        assert fast is not None
        try:
            msg = decode_ack(item.payload, self._max_payload)
        except ProtocolError as exc:
            self._report(item.device_id, exc.kind, str(exc))
            item.ack()
            return
        self._presence.on_activity(item.device_id, item.at)
        event = AckReceived(item.device_id, msg.id, msg.ok, msg.result, msg.error, item.at)
        publish, puback = self._bus.publish, item.ack

        def done() -> None:
            publish(event)
            puback()

        try:
            taken = fast(event, done)
        except Exception:
            log.exception("ack from %s: fast path failed; handled the usual way", item.device_id)
            taken = False
        if not taken:
            self._enqueue_slow(item)

    def _enqueue_slow(self, item: _SlowItem) -> None:
        """Queue a status or ack for the workers. QoS 1 entries are bounded by the MQTT
        server's in-flight window to us; QoS 0 ones by `max_pending_qos0` (then dropped)."""
        qos0 = item.ack is no_ack
        if qos0 and self._slow_qos0 >= self._max_pending_qos0:
            self.dropped_qos0 += 1
            return
        self._slow_qos0 += qos0
        if not self.slow_pending():
            self._slow_busy_since = time.monotonic()
        self._slow.put_nowait(item)

    async def _dead_reading(self, r: Reading, source: bytes | None, exc: Exception) -> None:
        """A reading the store refuses for good: keep it as a dead letter (then it is acked)."""
        if self.dead_letters is None:
            log.error("device %s: reading refused by the store, dropped: %s", r.device_id, exc)
            return
        if source is None:
            source = encode(Telemetry(r.seq, r.values, r.ts_ms, r.boot))
        topic = self._topics.device(r.device_id, Channel.TELEMETRY)
        await self.dead_letters.record(r.device_id, topic, source, exc)

    async def slow_worker(self) -> None:
        """Serve the status/ack queue (a few of these run; each is supervised)."""
        while True:
            item = await self._slow.get()
            self._slow_qos0 -= item.ack is no_ack
            self._slow_busy += 1
            try:
                await self._handle_slow(item)
            finally:
                self._slow_busy -= 1
                self._slow_done_at = time.monotonic()
                self._slow.task_done()

    async def _handle_slow(self, item: _SlowItem) -> None:
        """Handle one status or ack: retried while the store is unavailable (held, not
        acked); set aside as a dead letter if it can never succeed; then acknowledged."""
        backoff = Backoff(0.1, SLOW_RETRY_MAX_S)
        while True:
            try:
                if item.channel is Channel.STATUS:
                    self._status(item)  # the statuses writer acknowledges it once committed
                    return
                await self._ack(item.device_id, item.payload, item.at)
            except ProtocolError as exc:
                self._report(item.device_id, exc.kind, str(exc))
            except TransientStoreError as exc:
                self.slow_retries += 1
                if self.slow_retries == 1 or backoff.current >= SLOW_RETRY_MAX_S:
                    log.warning(
                        "could not handle %s from %s (%s); holding it and retrying",
                        item.channel,
                        item.device_id,
                        exc,
                    )
                await backoff.sleep()
                continue
            except Exception as exc:  # permanent: this message can never be handled
                if not await self._dead_slow(item, exc):
                    continue  # the dead letter itself could not be written yet: retry
            item.ack()
            return

    async def _dead_slow(self, item: _SlowItem, exc: Exception) -> bool:
        """Set a status or ack aside; False if the store is unavailable for that too."""
        if not isinstance(exc, PlantyError):
            log.error("%s from %s failed unexpectedly", item.channel, item.device_id, exc_info=exc)
        self.slow_dead_lettered += 1
        if self.dead_letters is None:
            log.error("%s from %s set aside: %s", item.channel, item.device_id, exc)
            return True
        try:
            await self.dead_letters.record(item.device_id, item.topic, item.payload, exc)
        except TransientStoreError:
            self.slow_dead_lettered -= 1
            await asyncio.sleep(SLOW_RETRY_MAX_S / 5)
            return False
        except Exception as dl_exc:
            log.error("could not keep a dead letter (%s); dropped: %s", dl_exc, exc)
        return True

    def _status(self, item: _SlowItem) -> None:
        """Presence and statistics at once; what the status declares goes to the statuses
        writer, which acknowledges it and publishes `DeviceStatusReceived` after its commit."""
        device_id, at = item.device_id, item.at
        if item.ack is no_ack and self.statuses.pending() >= self._max_pending_qos0:
            self.dropped_qos0 += 1  # QoS 0: nothing bounds these but us
            return
        status = decode_status(item.payload, self._max_payload)
        if self._stats is not None:  # before presence: it reads the state the device comes from
            self._stats.on_status(device_id, status, item.retain, at)
        self._presence.on_status(
            device_id,
            status.online,
            status.interval_s,
            at,
            clean=status.reason == SHUTDOWN_REASON,
        )
        changes = self._registry.declared(device_id, status)
        event = DeviceStatusReceived(device_id, status.online, at, status)
        self.statuses.submit(_StatusWrite(device_id, changes, event), item.ack, item.payload)

    async def _write_statuses(self, items: Sequence[_StatusWrite]) -> None:
        """One transaction for the batch; a batch that changes nothing is not a commit."""
        patches = [(i.device_id, i.changes) for i in items if i.changes]
        if patches:
            await self._store.patch_devices(patches)

    def _statuses_committed(self, items: Sequence[_StatusWrite]) -> None:
        publish = self._bus.publish
        for i in items:
            publish(i.event)

    async def _dead_status(self, item: _StatusWrite, source: bytes | None, exc: Exception) -> None:
        """A status the store refuses for good: a dead letter (then it is acknowledged)."""
        if self.dead_letters is None or source is None:
            log.error("status from %s set aside: %s", item.device_id, exc)
            return
        topic = self._topics.device(item.device_id, Channel.STATUS)
        await self.dead_letters.record(item.device_id, topic, source, exc)

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
