"""The outbox engine: active commands in memory, delivery, ack timeouts, deadlines, re-sends.

Every active (queued or sent) command is held here, per device in creation order.
A change reaches memory only once committed (`closing` guards the gap), so what
the API shows is what the store holds. Delivery: a command is handed to the
dispatcher when it is committed and its device is online, or when its device comes
back (oldest first). A sent command whose ack timer runs out is re-sent (same id),
failed after `max_attempts`, expired past its deadline, or parked while its device
or the MQTT link is away and re-sent when both are back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from planty_broker.config import CommandSettings
from planty_broker.domain import commands as cmds
from planty_broker.domain.commands import (
    CommandChange,
    CommandRecord,
    CommandState,
    CommandTransition,
    SendLeases,
)
from planty_broker.domain.models import PresenceState
from planty_broker.ports.store import CommandStore
from planty_broker.protocol import Channel, Command, ErrorKind, Topics, encode
from planty_broker.services.bus import Bus, DeviceError, DevicesChanged, PresenceChanged
from planty_broker.services.commands.dispatch import Dispatcher
from planty_broker.services.commands.journal import Journal
from planty_broker.services.commands.ping import Pinger, RttSink
from planty_broker.services.commands.timers import TimerKind, Timers
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry
from planty_broker.tasks import spawn
from planty_broker.text import plural

log = logging.getLogger(__name__)

_ONLINE = (PresenceState.ONLINE, PresenceState.LATE)
RECENT = 10_000  # final commands kept in memory for fast GET / wait
SWEEP_EVERY_S = 1.0
LEASE_RETRY_MS = 250  # a command whose lease row was busy (another instance leasing it): ask again
COMPACT_AT = 10_000  # timer entries beyond 4 per live command before dropping stale ones


@dataclass(frozen=True, slots=True)
class CommandChanged:
    """Bus event: a command changed state (once committed; `sent` when it is published)."""

    record: CommandRecord
    transition: CommandTransition


@dataclass(slots=True)
class Live:
    """An active command and what the engine knows about it beyond the row."""

    rec: CommandRecord
    durable: bool = False  # its `queued` row is committed: it may be sent
    closing: bool = False  # a final change is being committed
    parked: bool = False  # sent, no ack in time, device or link away: re-send when back
    ready: bool = False  # waiting in the dispatcher's queue (at most once)
    waiters: set[asyncio.Future[CommandRecord]] = field(default_factory=set)
    closed: asyncio.Future[None] | None = None  # resolved once the final change is committed


class Outbox:
    """Holds and delivers the active commands; `CommandService` is its front door."""

    def __init__(
        self,
        store: CommandStore,
        bus: Bus,
        registry: DeviceRegistry,
        presence: PresenceService,
        topics: Topics,
        settings: CommandSettings,
        stats: RttSink,
        clock: Callable[[], int],
        lease_owner: str | None = None,
    ) -> None:
        """`lease_owner`: this instance's name for send leases (several instances, issue 15):
        each send first takes the command's lease in the store, for one ack timeout, renewed at
        each re-send; a command leased by another instance waits until that lease ends. None
        (one gateway): no leases, no store round trip per send."""
        self._store = store
        self._bus = bus
        self._registry = registry
        self._presence = presence
        self._topics = topics
        self.settings = settings
        self.stats = stats
        self._clock = clock
        self._ack_ms = int(settings.ack_timeout_s * 1000)
        self.live: dict[str, Live] = {}
        self.by_device: dict[str, dict[str, Live]] = {}
        self.parked: set[str] = set()
        self.recent: collections.OrderedDict[str, CommandRecord] = collections.OrderedDict()
        self.journal = Journal(store.apply_command_changes)
        self.timers = Timers(self._on_timer, clock)
        self.lease_owner = lease_owner
        self.dispatcher = Dispatcher(
            self._send,
            rate_per_s=settings.dispatch_rate_per_s,
            burst=settings.dispatch_burst,
            lease=None if lease_owner is None else self._lease,
            refused=self._lease_refused,
        )
        self.pinger = Pinger(
            self.dispatcher,
            topics,
            bus,
            stats,
            self.online_devices,
            clock,
            interval_s=settings.ping_interval_s,
            ack_timeout_s=settings.ack_timeout_s,
        )
        self._sweeper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        bus.subscribe(PresenceChanged, self._on_presence)
        bus.subscribe(DevicesChanged, self._on_devices_changed)

    async def start(self) -> None:
        """Reload queued and unacked commands (ack timers resumed from the store)."""
        for rec in await self._store.active_commands():
            live = self.add(rec)
            live.durable = True
            self.timers.add(rec.exp_ms, TimerKind.DEADLINE, rec.id)
            if rec.state is CommandState.SENT:
                due = (rec.last_sent_ms or rec.updated_ms) + self._ack_ms
                self.timers.add(due, TimerKind.ACK, rec.id, rec.attempts)
        if self.live:
            log.info("commands: resumed %d queued or unacked command(s)", len(self.live))
        await self.journal.start()
        await self.timers.start()
        await self.dispatcher.start()
        await self.pinger.start()
        self._sweeper = spawn("commands-sweep", self._sweep_loop)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.pinger.stop()
        await self.dispatcher.stop()
        await self.timers.stop()
        await self.journal.stop()

    # ------------------------------------------------------------ state

    def add(self, rec: CommandRecord) -> Live:
        live = Live(rec)
        self.live[rec.id] = live
        self.by_device.setdefault(rec.device_id, {})[rec.id] = live
        return live

    def online(self, device_id: str) -> bool:
        p = self._presence.get(device_id)
        return p is not None and p.state in _ONLINE

    def online_devices(self) -> list[str]:
        return [d.id for d in self._registry.all() if self.online(d.id)]

    def queued_committed(self, live: Live, change: CommandChange) -> None:
        """A new command's `queued` row is committed: time its deadline, send if online."""
        live.durable = True
        self.publish_change(change)
        self.timers.add(live.rec.exp_ms, TimerKind.DEADLINE, live.rec.id)
        if self.online(live.rec.device_id) and live.rec.id in self.live:
            self._enqueue(live)

    def close(
        self, live: Live, change: CommandChange, before: Awaitable[None] | None = None
    ) -> asyncio.Future[None]:
        """Commit a final change; memory follows once it is committed (the future says when).

        `before` (e.g. storing a `read`'s readings) completes first, so whoever sees the
        final state also finds what came with it.
        """
        live.closing = True
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        live.closed = closed

        def done() -> None:
            self.finish(live, change)
            if not closed.done():
                closed.set_result(None)

        if before is None:
            self.journal.submit([change], done)
        else:

            async def then() -> None:
                try:
                    await before
                finally:
                    self.journal.submit([change], done)

            task = asyncio.create_task(then(), name=f"close-{change.record.id}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return closed

    def finish(self, live: Live, change: CommandChange) -> None:
        """After a final change is committed: forget the live entry, answer its waiters."""
        rec = change.record
        live.rec = rec
        self.live.pop(rec.id, None)
        mine = self.by_device.get(rec.device_id)
        if mine is not None:
            mine.pop(rec.id, None)
            if not mine:
                del self.by_device[rec.device_id]
        self.parked.discard(rec.id)
        self.remember(rec)
        for fut in live.waiters:
            if not fut.done():
                fut.set_result(rec)
        self.stats.command_final(rec.device_id, rec.state.value)
        self.publish_change(change)
        if len(self.timers) > COMPACT_AT + 4 * len(self.live):
            self.timers.compact(self.live.__contains__)

    def remember(self, rec: CommandRecord) -> None:
        self.recent[rec.id] = rec
        self.recent.move_to_end(rec.id)
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)

    def publish_change(self, change: CommandChange) -> None:
        self._bus.publish(CommandChanged(change.record, change.transition))

    def _park(self, live: Live) -> None:
        live.parked = True
        self.parked.add(live.rec.id)

    def _enqueue(self, live: Live) -> None:
        if not live.ready:
            live.ready = True
            self.dispatcher.enqueue(live.rec.id)

    # ------------------------------------------------------------ delivery

    async def _lease(self, ids: Sequence[str]) -> SendLeases:
        """Take (or renew) the send leases of the commands about to be sent, for one ack timeout."""
        assert self.lease_owner is not None
        now = self._clock()
        answer = await self._store.lease_commands(ids, self.lease_owner, now, now + self._ack_ms)
        if answer.held_until:
            log.info(
                "commands: %s leased by another instance; sent here once the lease ends "
                "(same id: the device deduplicates)",
                plural(len(answer.held_until), "command"),
            )
        return answer

    def _lease_refused(self, cid: str, held_until_ms: int | None) -> None:
        """Not ours to send now: try again when the other instance's lease ends."""
        live = self.live.get(cid)
        if live is None:
            return
        live.ready = False
        due = held_until_ms + 1 if held_until_ms is not None else self._clock() + LEASE_RETRY_MS
        self.timers.add(due, TimerKind.LEASE, cid, live.rec.attempts)

    async def _send(self, cid: str) -> None:
        """Publish one command (called by the dispatcher: paced, link up)."""
        live = self.live.get(cid)
        if live is None or not live.ready:
            return
        live.ready = False
        if live.closing or not live.durable:
            return
        rec = live.rec
        if not self.online(rec.device_id):
            if rec.state is CommandState.SENT:
                self._park(live)
            return  # queued: sent when the device is back
        now = self._clock()
        if now >= rec.exp_ms:
            reason = (
                "deadline passed before it could be sent"
                if rec.state is CommandState.QUEUED
                else "deadline passed without an ack"
            )
            self.close(live, cmds.ended(rec, CommandState.EXPIRED, now, reason))
            return
        change = cmds.sent(rec, now)
        live.rec, live.parked = change.record, False
        self.parked.discard(cid)
        self.journal.submit([change], lazy=True)
        self.timers.add(now + self._ack_ms, TimerKind.ACK, cid, change.record.attempts)
        payload = encode(Command(rec.id, rec.action, rec.args, rec.exp_ms))
        self.stats.command_sent(rec.device_id, len(payload))
        self.publish_change(change)
        link = self.dispatcher.link
        if link is not None:
            await link.publish(self._topics.device(rec.device_id, Channel.CMD), payload)

    def _on_timer(self, kind: TimerKind, cid: str, attempt: int, due_ms: int) -> None:
        live = self.live.get(cid)
        if live is None or live.closing:
            return
        rec, now = live.rec, self._clock()
        if kind is TimerKind.LEASE:
            if rec.attempts == attempt and not live.ready and not live.parked:
                if self.online(rec.device_id):
                    self._enqueue(live)
                elif rec.state is CommandState.SENT:
                    self._park(live)  # queued ones go when the device is back (release)
            return
        if kind is TimerKind.DEADLINE:
            if rec.state is CommandState.QUEUED:
                reason = "deadline passed before it could be sent (the device was not online)"
                self.close(live, cmds.ended(rec, CommandState.EXPIRED, now, reason))
            elif live.parked:
                reason = "deadline passed without an ack (the device went away)"
                self.close(live, cmds.ended(rec, CommandState.EXPIRED, now, reason))
            return
        if rec.state is not CommandState.SENT or rec.attempts != attempt or live.parked:
            return
        s = self.settings
        reachable = self.online(rec.device_id) and self.dispatcher.link_up
        if reachable:  # an ack missing from a device that is there counts against it
            self._bus.publish(
                DeviceError(
                    rec.device_id,
                    ErrorKind.ACK_TIMEOUT.value,
                    f"no ack for command {cid} ({rec.action}) within "
                    f"{s.ack_timeout_s:g} s (attempt {attempt})",
                    now,
                )
            )
        if rec.attempts >= s.max_attempts:
            reason = f"no ack after {plural(rec.attempts, 'attempt')} ({s.ack_timeout_s:g} s each)"
            self.close(live, cmds.ended(rec, CommandState.FAILED, now, reason))
        elif now >= rec.exp_ms:
            reason = "deadline passed without an ack"
            self.close(live, cmds.ended(rec, CommandState.EXPIRED, now, reason))
        elif reachable:
            self._enqueue(live)
        else:
            self._park(live)

    def _on_presence(self, event: PresenceChanged) -> None:
        t = event.transition
        if t.state in _ONLINE and event.previous not in ("online", "late"):
            self.release(t.device_id)

    def release(self, device_id: str) -> None:
        """The device is reachable: send what waits for it, oldest first."""
        for live in list(self.by_device.get(device_id, {}).values()):
            if not live.durable or live.closing:
                continue
            if live.rec.state is CommandState.QUEUED or live.parked:
                live.parked = False
                self.parked.discard(live.rec.id)
                self._enqueue(live)

    def _on_devices_changed(self, event: DevicesChanged) -> None:
        if event.change != "removed":
            return
        self.pinger.forget(event.device_id)
        for live in self.by_device.pop(event.device_id, {}).values():
            self.live.pop(live.rec.id, None)
            self.parked.discard(live.rec.id)
            for fut in live.waiters:
                if not fut.done():
                    fut.set_result(live.rec)

    async def _sweep_loop(self) -> None:
        """Parked commands of reachable devices go out again (e.g. after the MQTT link came
        back without any presence change)."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            self.parked &= self.live.keys()
            if self.parked and self.dispatcher.link_up:
                for device_id in {self.live[c].rec.device_id for c in self.parked}:
                    if self.online(device_id):
                        self.release(device_id)
