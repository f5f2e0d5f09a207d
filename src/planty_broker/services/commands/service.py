"""The durable command outbox, front door: submit, wait, cancel, look up, and the ack hook.

submit -> `queued` row committed (with its event) -> sent when the device is online
(oldest first, paced; the `sent` row rides the next commit, see `commands_journal`)
-> the device's ack is committed before its PUBACK goes out -> `acked` / `failed`.
No ack within `ack_timeout_s`: re-sent with the same id up to `max_attempts`, then
`failed`; deadline first: `expired`, never sent late (see `commands_outbox`).
Queued and unacked commands are reloaded after a restart, their ack timers resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from planty_broker.config import CommandSettings
from planty_broker.domain import commands as cmds
from planty_broker.domain.commands import CommandRecord, CommandState, CommandTransition
from planty_broker.domain.models import Reading
from planty_broker.ports.link import Publisher
from planty_broker.ports.store import CommandStore
from planty_broker.protocol import Ack, ErrorKind, ProtocolError, Topics
from planty_broker.services.bus import AckReceived, Bus, DevicesChanged
from planty_broker.services.commands.outbox import CommandChanged, Live, Outbox
from planty_broker.services.commands.ping import PING_PREFIX, RttBook, RttSink
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry, UnknownDeviceError, now_ms
from planty_broker.tasks import spawn
from planty_broker.text import plural

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0

ReadingSink = Callable[[Reading], Awaitable[None]]


class QueueFullError(cmds.CommandError):
    """The device already has `max_queue_per_device` commands waiting or unacked."""


class CommandNotFoundError(cmds.CommandError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class NotCancellableError(cmds.CommandError):
    pass


class CommandConflictError(cmds.CommandError):
    """A server-chosen id that already names a different command."""


def _forget_removed(book: RttBook, event: DevicesChanged) -> None:
    if event.change == "removed":
        book.forget(event.device_id)


class CommandService:
    """Submit, cancel and follow commands; `handle_ack` is ingest's ack hook."""

    def __init__(
        self,
        store: CommandStore,
        bus: Bus,
        registry: DeviceRegistry,
        presence: PresenceService,
        topics: Topics,
        settings: CommandSettings,
        *,
        stats: RttSink | None = None,
        readings: ReadingSink | None = None,
        clock: Callable[[], int] = now_ms,
        lease_owner: str | None = None,
    ) -> None:
        """`stats`: where round trips and outcomes are counted (None: our own `rtt_book`).
        `readings`: where the readings of an acked `read` are stored as telemetry.
        `lease_owner`: send leases under this name (several instances: `Outbox`)."""
        self._store = store
        self._registry = registry
        self.settings = settings
        book = RttBook()
        self.rtt_book = book if stats is None else None
        if stats is None:  # a removed device's sketches go with it
            bus.subscribe(DevicesChanged, lambda e: _forget_removed(book, e))
        self._readings = readings
        self._clock = clock
        self.outbox = Outbox(
            store, bus, registry, presence, topics, settings, stats or book, clock, lease_owner
        )
        self._pruner: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    def attach(self, link: Publisher) -> None:
        """The MQTT link to publish on (created after the services start)."""
        self.outbox.dispatcher.link = link

    async def start(self) -> None:
        await self.outbox.start()
        self._pruner = spawn("commands-prune", self._prune_loop)

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        await self.outbox.stop()

    # ------------------------------------------------------------ the API

    async def submit(
        self,
        device_id: str,
        action: str,
        args: dict[str, Any] | None = None,
        *,
        ttl_s: float | None = None,
        wait_s: float = 0.0,
        origin: str = "api",
        command_id: str | None = None,
    ) -> CommandRecord:
        """Queue a command durably; with `wait_s` > 0, return once final or when time is up.

        Raises UnknownDeviceError, InvalidActionError / InvalidArgsError (saying what
        is valid), QueueFullError, CommandConflictError. A `command_id` already used
        for the same device and action returns that command (idempotent submit).
        """
        s, box = self.settings, self.outbox
        device = self._registry.require(device_id)
        ttl = s.default_ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= s.max_ttl_s:
            raise cmds.InvalidArgsError(
                f"ttl_s must be > 0 and <= {s.max_ttl_s:g} (commands.max_ttl_s), got {ttl:g}"
            )
        prepared = cmds.prepare(
            action,
            dict(args or {}),
            device.actuators,
            s.max_on_seconds,
            s.max_on_seconds_by_actuator,
        )
        if command_id is not None:
            existing = await self._existing(command_id, device_id, action)
            twin = box.live.get(command_id)  # a call racing with this one created it meanwhile
            if existing is None and twin is not None:
                if twin.rec.device_id != device_id or twin.rec.action != action:
                    raise CommandConflictError(
                        f"command id {command_id!r} already names {twin.rec.action} for "
                        f"{twin.rec.device_id}; use a new id"
                    )
                existing = twin.rec
            if existing is not None:
                return await self.wait(existing.id, wait_s) if wait_s > 0 else existing
        now = self._clock()
        rec = CommandRecord(
            id=command_id or cmds.new_command_id(now),
            device_id=device_id,
            action=action,
            args=prepared,
            created_ms=now,
            exp_ms=now + int(ttl * 1000),
            origin=origin,
        )
        mine = box.by_device.get(device_id, {})
        victims = [v for v in mine.values() if not v.closing and cmds.supersedes(rec, v.rec)]
        waiting = sum(1 for v in mine.values() if not v.closing) - len(victims)
        if waiting >= s.max_queue_per_device:
            raise QueueFullError(
                f"device {device_id} already has {plural(waiting, 'command')} waiting or unacked "
                f"(commands.max_queue_per_device = {s.max_queue_per_device}); wait for them "
                "to finish or cancel some (DELETE /api/v1/commands/<id>)"
            )
        changes = [cmds.queued(rec)]
        for v in victims:
            v.closing = True
            changes.append(cmds.superseded(v.rec, rec, now))
        live = box.add(rec)
        fut = self._waiter(live) if wait_s > 0 else None  # registered before it can be sent
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done() -> None:
            for v, ch in zip(victims, changes[1:], strict=True):
                box.finish(v, ch)
            box.queued_committed(live, changes[0])
            if not committed.done():
                committed.set_result(None)

        box.journal.submit(changes, done)
        try:
            await asyncio.shield(committed)
            if fut is None:
                return live.rec
            return await self._await(rec.id, fut, wait_s)
        finally:
            if fut is not None:
                live.waiters.discard(fut)

    async def wait(self, command_id: str, wait_s: float) -> CommandRecord:
        """The command once final, or as it is when `wait_s` runs out."""
        live = self.outbox.live.get(command_id)
        if live is None:
            return await self.require(command_id)
        fut = self._waiter(live)
        try:
            return await self._await(command_id, fut, wait_s)
        finally:
            live.waiters.discard(fut)

    async def cancel(self, command_id: str) -> CommandRecord:
        """Cancel a command not yet sent; raises NotCancellableError otherwise."""
        live = self.outbox.live.get(command_id)
        if live is None or live.closing:
            rec = await self.require(command_id)
            raise NotCancellableError(
                f"command {command_id} is already {rec.state.value}; only a queued command "
                "can be cancelled"
            )
        if live.rec.state is not CommandState.QUEUED:
            raise NotCancellableError(
                f"command {command_id} was already sent to the device "
                f"({live.rec.attempts} time(s)); it can no longer be cancelled"
            )
        change = cmds.ended(
            live.rec, CommandState.CANCELLED, self._clock(), "cancelled by the server"
        )
        await asyncio.shield(self.outbox.close(live, change))
        return change.record

    async def get(self, command_id: str) -> CommandRecord | None:
        live = self.outbox.live.get(command_id)
        if live is not None:
            return live.rec
        recent = self.outbox.recent.get(command_id)
        if recent is not None:
            return recent
        return await self._store.get_command(command_id)

    async def require(self, command_id: str) -> CommandRecord:
        rec = await self.get(command_id)
        if rec is None:
            raise CommandNotFoundError(f"no command with id {command_id!r}")
        return rec

    async def history(self, command_id: str) -> list[CommandTransition]:
        return await self._store.command_history(command_id)

    async def find(
        self, device_id: str | None, states: Sequence[str] | None = None, limit: int = 100
    ) -> list[CommandRecord]:
        """Newest first; live states (a `sent` not yet committed) win over stored ones."""
        found = {r.id: r for r in await self._store.list_commands(device_id, states, limit)}
        box = self.outbox
        live = box.by_device.get(device_id, {}).values() if device_id else box.live.values()
        for lv in live:
            if lv.durable and (not states or lv.rec.state.value in states):
                found[lv.rec.id] = lv.rec
        out = [r for r in found.values() if not states or r.state.value in states]
        out.sort(key=lambda r: (r.created_ms, r.id), reverse=True)
        return out[:limit]

    def active_count(self, device_id: str | None = None) -> int:
        if device_id is None:
            return len(self.outbox.live)
        return len(self.outbox.by_device.get(device_id, {}))

    def latency(self, device_id: str, window_ms: int) -> dict[str, Any] | None:
        """RTT summary from our own book (None when the statistics service keeps it)."""
        if self.rtt_book is None:
            return None
        return self.rtt_book.summary(device_id, window_ms, self._clock())

    # ------------------------------------------------------------ acks (ingest's hook)

    async def handle_ack(self, event: AckReceived) -> None:
        """Commit the outcome before returning (the PUBACK follows); unknown id: ProtocolError."""
        box = self.outbox
        cid, device_id, at = event.command_id, event.device_id, event.at_ms
        if cid.startswith(PING_PREFIX):
            box.pinger.handle_ack(device_id, cid, at)
            return
        ack = Ack(cid, event.ok, event.result, event.error)
        live = box.live.get(cid)
        if live is None or live.rec.device_id != device_id:
            await self._ack_not_live(device_id, ack, at, live is None)
            return
        if live.closing:  # ended meanwhile (e.g. failed): once committed, a late ack
            if live.closed is not None:
                await asyncio.shield(live.closed)
            else:  # superseded in a submit's batch: wait for everything queued so far
                await box.journal.write([])
            await self.handle_ack(event)
            return
        change = cmds.acked(live.rec, ack, at)
        if change.record.rtt_ms is not None:
            box.stats.record_rtt(device_id, change.record.rtt_ms, at)
            box.pinger.measured(device_id, at)
        reading = _read_reading(change.record, at)
        stored = self._readings(reading) if reading is not None and self._readings else None
        await asyncio.shield(box.close(live, change, before=stored))

    def ack_now(self, event: AckReceived, done: Callable[[], None]) -> bool:
        """`handle_ack`'s plain cases without a task or a worker waiting on the commit: a
        ping's ack, or the ack of a live command that is not being ended and is not a `read`
        (whose readings are stored first). `done()` runs once the outcome is committed (the
        PUBACK follows it, as after `handle_ack`). False: nothing was done; use `handle_ack`."""
        box = self.outbox
        cid, device_id, at = event.command_id, event.device_id, event.at_ms
        if cid.startswith(PING_PREFIX):
            box.pinger.handle_ack(device_id, cid, at)
            done()
            return True
        live = box.live.get(cid)
        if (
            live is None
            or live.closing
            or live.rec.device_id != device_id
            or live.rec.action == "read"
        ):
            return False
        change = cmds.acked(live.rec, Ack(cid, event.ok, event.result, event.error), at)
        if change.record.rtt_ms is not None:
            box.stats.record_rtt(device_id, change.record.rtt_ms, at)
            box.pinger.measured(device_id, at)
        box.close(live, change).add_done_callback(lambda _f: done())
        return True

    async def _ack_not_live(self, device_id: str, ack: Ack, at: int, look: bool) -> None:
        rec = await self.get(ack.id) if look else None
        if rec is None or rec.device_id != device_id:
            raise ProtocolError(ErrorKind.UNKNOWN_COMMAND, f"ack for unknown command id {ack.id!r}")
        if rec.state in (CommandState.FAILED, CommandState.EXPIRED) and rec.late_ack is None:
            change = cmds.late_ack(rec, ack, at)
            await self.outbox.journal.write([change])
            self.outbox.remember(change.record)
            self.outbox.publish_change(change)
        # else: a repeated ack of a final command (the device re-acks a re-send): nothing to do

    # ------------------------------------------------------------ internals

    def _waiter(self, live: Live) -> asyncio.Future[CommandRecord]:
        fut: asyncio.Future[CommandRecord] = asyncio.get_running_loop().create_future()
        live.waiters.add(fut)
        return fut

    async def _await(
        self, command_id: str, fut: asyncio.Future[CommandRecord], wait_s: float
    ) -> CommandRecord:
        try:
            async with asyncio.timeout(wait_s):
                return await fut
        except TimeoutError:
            return await self.require(command_id)

    async def _existing(self, command_id: str, device_id: str, action: str) -> CommandRecord | None:
        if not cmds.valid_command_id(command_id) or command_id.startswith(PING_PREFIX):
            raise cmds.InvalidArgsError(
                f"command id {command_id!r} is invalid: use 3-64 of A-Z a-z 0-9 - _ . : "
                f"(not starting with {PING_PREFIX!r})"
            )
        rec = await self.get(command_id)
        if rec is None:
            return None
        if rec.device_id != device_id or rec.action != action:
            raise CommandConflictError(
                f"command id {command_id!r} already names {rec.action} for {rec.device_id}; "
                "use a new id"
            )
        return rec

    async def _prune_loop(self) -> None:
        keep_ms = int(self.settings.keep_final_s * 1000)
        while True:
            try:
                n = 1000
                while n == 1000:
                    n = await self._store.prune_commands(self._clock() - keep_ms, 1000)
            except Exception as exc:
                log.warning("commands: could not delete old final commands yet: %s", exc)
            await asyncio.sleep(PRUNE_EVERY_S)


def _read_reading(rec: CommandRecord, at: int) -> Reading | None:
    """The readings an acked `read` carried, as telemetry (seq -1: not from the stream)."""
    if rec.action != "read" or rec.state is not CommandState.ACKED or not rec.result:
        return None
    raw = rec.result.get("readings")
    if not isinstance(raw, dict):
        return None
    values = {
        k: float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return Reading(rec.device_id, -1, at, at, values) if values else None


__all__ = [
    "CommandChanged",
    "CommandConflictError",
    "CommandNotFoundError",
    "CommandService",
    "NotCancellableError",
    "QueueFullError",
    "UnknownDeviceError",
]
