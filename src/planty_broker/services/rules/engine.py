"""The running side of the rules: readings in, commands and history lines out.

`RuleEngine` owns the live `RuleIndex`. After each durable batch of readings
(bus `ReadingStored`) it evaluates the rules synchronously, in one task, with no
await; a fire is submitted to the command outbox (origin `rule`, a short deadline)
from a task of its own; every decision the index returns is a history line,
written in batches with its `rule` event in the event log. It also notes manual
commands (a `queued` command whose origin is not `rule`) so they win over rules,
rebuilds a device's rule map when its status declares new actuators, warns about
silent sensors every `silence_check_s` and prunes old history.

Nothing here needs the network beyond the MQTT server the devices use: the rules
keep working while the Planty server and the cloud are unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from planty_broker.config import RuleSettings
from planty_broker.domain.commands import CommandRecord, new_command_id
from planty_broker.domain.rules.eval import Decision, Outcome, human_ms
from planty_broker.domain.rules.index import RuleIndex
from planty_broker.domain.rules.records import ORIGIN_RULE, HistoryOutcome, RuleEvent
from planty_broker.ports.store import RuleStore
from planty_broker.services.bus import (
    Bus,
    DeviceStatusReceived,
    ReadingObserved,
    ReadingStored,
)
from planty_broker.services.commands.outbox import CommandChanged
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.services.writer import BatchWriter
from planty_broker.tasks import spawn

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0
PRUNE_CHUNK = 10_000
RESTORE_FIRES_MS = 25 * 3_600_000  # "today" in any zone, daylight saving time included
RESTORE_COMMANDS = 1000  # newest commands looked at for manual holds after a restart


class Submitter(Protocol):
    """What the engine needs from the command outbox (services.commands.CommandService)."""

    async def submit(
        self,
        device_id: str,
        action: str,
        args: dict[str, Any] | None = None,
        *,
        ttl_s: float | None = None,
        origin: str = "api",
        command_id: str | None = None,
    ) -> CommandRecord: ...


def _noop() -> None:
    return None


class RuleEngine:
    """Evaluates the live rule set on every stored reading; see the module docstring."""

    def __init__(
        self,
        store: RuleStore,
        bus: Bus,
        registry: DeviceRegistry,
        settings: RuleSettings,
        *,
        commands: Submitter | None = None,
        clock: Callable[[], int] = now_ms,
        notify: Callable[[], None] | None = None,
    ) -> None:
        """`notify`: called after history lines are committed (wakes event log readers)."""
        self._store = store
        self._bus = bus
        self._registry = registry
        self.settings = settings
        self.commands = commands
        self._clock = clock
        self.index = RuleIndex(actuators_of=self._actuators_of)
        self.history: BatchWriter[RuleEvent] = BatchWriter(
            store.append_rule_history,
            max_batch=500,
            max_wait_ms=20.0,
            name="rule-history",
            after_commit=(lambda _items: notify()) if notify is not None else None,
        )
        self.counts: dict[str, int] = dict.fromkeys(
            ("fires", "suppressed", "warnings", "holds", "command_errors"), 0
        )
        self._unsubscribe: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    def _actuators_of(self, device_id: str) -> Sequence[str] | None:
        device = self._registry.get(device_id)
        return device.actuators if device is not None and device.actuators else None

    # ------------------------------------------------------------ lifecycle

    async def start(self, restore_holds_from: Any = None) -> None:
        """Restore today's fires (budgets, cooldowns) and recent manual holds, then listen.

        Call after the rules were loaded into `index`. `restore_holds_from`: a
        CommandStore to find manual commands still holding rules (None: skip).
        """
        now = self._clock()
        for fire in await self._store.rule_fires_since(now - RESTORE_FIRES_MS):
            if fire.device_id is not None:
                self.index.restore_fire(fire.rule_id, fire.device_id, fire.at_ms)
        if restore_holds_from is not None:
            await self._restore_holds(restore_holds_from, now)
        await self.history.start()
        bus = self._bus
        self._unsubscribe = [
            bus.subscribe(self.reading_event, self._on_reading),
            bus.subscribe(CommandChanged, self._on_command),
            bus.subscribe(DeviceStatusReceived, self._on_status),
        ]
        self._loops = [
            spawn("rules-silence", self._silence_loop),
            spawn("rules-history-prune", self._prune_loop),
        ]

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops = []
        if self._tasks:  # fires being submitted: let them reach the outbox and the history
            await asyncio.wait(set(self._tasks), timeout=5)
        await self.history.stop()

    async def _restore_holds(self, commands: Any, now: int) -> None:
        longest_ms = max((int(r.hold_s * 1000) for r in self.index.rules()), default=0)
        if not longest_ms or not hasattr(commands, "list_commands"):
            return
        recent: list[CommandRecord] = await commands.list_commands(None, None, RESTORE_COMMANDS)
        for rec in reversed(recent):  # oldest first: later holds extend earlier ones
            if rec.origin != ORIGIN_RULE and rec.actuator and rec.created_ms >= now - longest_ms:
                self.index.note_manual_command(rec.device_id, rec.action, rec.created_ms)

    # ------------------------------------------------------------ readings (hot path)

    # Scale-out: the lease holder evaluates the copies of every reading (ReadingObserved),
    # since the readings themselves are stored by whichever instance consumed them.
    reading_event: type[ReadingStored] | type[ReadingObserved] = ReadingStored
    # Scale-out: a fire's history line is committed before its command is submitted, so the
    # next lease holder restores it (cooldown, budget) even if this instance dies right then.
    durable_fires = False

    def _on_reading(self, event: ReadingStored | ReadingObserved) -> None:
        r = event.reading
        decisions = self.index.evaluate(r.device_id, r.values, r.ts_ms, self._clock())
        if decisions:
            self.handle(decisions)

    def handle(self, decisions: Sequence[Decision]) -> None:
        """Send the fires, write every decision to the history."""
        for d in decisions:
            if d.fired:
                self.counts["fires"] += 1
                data = d.to_event()
                data["command_id"] = new_command_id()  # the line is written now, in order
                line = RuleEvent(d.rule_id, d.device_id, d.at_ms, d.outcome, data)
                if not self.durable_fires:
                    self.record(line)
                task = asyncio.get_running_loop().create_task(self._fire(d, data))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                key = "warnings" if d.outcome is Outcome.WARNING else "suppressed"
                self.counts[key] += 1
                self.record(RuleEvent(d.rule_id, d.device_id, d.at_ms, d.outcome, d.to_event()))

    async def _fire(self, d: Decision, data: dict[str, Any]) -> None:
        """Submit a fire's command (its line is already written, with the command id);
        a refused command adds an `error` line saying why it was not sent."""
        error = None
        if self.durable_fires:  # the fire's line first: whoever takes over knows it fired
            try:
                line = RuleEvent(d.rule_id, d.device_id, d.at_ms, d.outcome, data)
                await self.record_now([line])
            except Exception as exc:
                log.warning("rule %s: fire not recorded, not sent: %s", d.rule_id, exc)
                return
        if self.commands is None:
            error = "no command service in this broker"
        else:
            try:
                await self.commands.submit(
                    d.device_id,
                    d.action,
                    dict(d.args),
                    ttl_s=self.settings.command_ttl_s,
                    origin=ORIGIN_RULE,
                    command_id=data["command_id"],
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused (queue full, actuator gone) or store down
                error = str(exc) or type(exc).__name__
        if error is None:
            return
        self.counts["command_errors"] += 1
        log.warning(
            "rule %s fired on %s but %s was not sent: %s",
            d.rule_id,
            d.device_id,
            d.action,
            error,
            extra={"device_id": d.device_id},
        )
        at = self._clock()
        self.record(
            RuleEvent(
                d.rule_id,
                d.device_id,
                at,
                HistoryOutcome.ERROR.value,
                {
                    **data,
                    "outcome": HistoryOutcome.ERROR.value,
                    "reason": "command_refused",
                    "at_ms": at,
                    "error": error,
                    "detail": f"{d.action} was not sent: {error}",
                },
            )
        )

    def record(self, event: RuleEvent) -> None:
        """Queue one history line (written with its event, in a batch)."""
        self.history.submit(event, _noop)

    async def record_now(self, events: Sequence[RuleEvent]) -> None:
        """Queue history lines behind those already queued; return once they are stored."""
        for e in events[:-1]:
            self.history.submit(e, _noop)
        if events:
            await self.history.write(events[-1])

    # ------------------------------------------------------------ side doors

    def _on_command(self, event: CommandChanged) -> None:
        rec = event.record
        if event.transition.state != "queued" or rec.origin == ORIGIN_RULE or rec.actuator is None:
            return
        at = self._clock()
        for rule_id in self.index.note_manual_command(rec.device_id, rec.action, at):
            rule = self.index.get(rule_id)
            if rule is None:
                continue
            self.counts["holds"] += 1
            until = at + int(rule.hold_s * 1000)
            state = self.index.state(rule_id, rec.device_id)
            if state is not None:
                until = max(until, state.manual_hold_until_ms)
            detail = (
                f"manual {rec.action} ({rec.origin}, command {rec.id}) holds {rule.action} "
                f"for {human_ms(until - at)}"
            )
            self.record(
                RuleEvent(
                    rule_id,
                    rec.device_id,
                    at,
                    HistoryOutcome.HOLD.value,
                    {
                        "rule_id": rule_id,
                        "device_id": rec.device_id,
                        "outcome": HistoryOutcome.HOLD.value,
                        "reason": "manual",
                        "reading": rule.reading,
                        "value": None,
                        "reading_ts_ms": None,
                        "at_ms": at,
                        "action": rec.action,
                        "args": dict(rec.args),
                        "detail": detail,
                        "command_id": rec.id,
                        "origin": rec.origin,
                        "hold_until_ms": until,
                    },
                )
            )

    def _on_status(self, event: DeviceStatusReceived) -> None:
        self.index.invalidate_device(event.device_id)

    # ------------------------------------------------------------ loops

    def check_silence(self) -> int:
        """One pass of the silent-sensor check; returns how many warnings it wrote."""
        warnings = self.index.silent_sensors(self._clock())
        self.handle(warnings)
        if warnings:
            log.info(
                "rules: %d sensor(s) went silent, e.g. %s",
                len(warnings),
                warnings[0].detail,
                extra={"device_id": warnings[0].device_id},
            )
        return len(warnings)

    async def _silence_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.silence_check_s)
            try:
                self.check_silence()
            except Exception:
                log.exception("rules: the silent-sensor check failed; trying again later")

    async def prune_once(self) -> int:
        """Delete history lines older than `history_keep_days`; returns how many."""
        before = self._clock() - int(self.settings.history_keep_days * 86_400_000)
        total, n = 0, PRUNE_CHUNK
        while n == PRUNE_CHUNK:
            n = await self._store.prune_rule_history(before, PRUNE_CHUNK)
            total += n
        return total

    async def _prune_loop(self) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception as exc:
                log.warning("rules: could not delete old history yet: %s", exc)
            await asyncio.sleep(PRUNE_EVERY_S)
