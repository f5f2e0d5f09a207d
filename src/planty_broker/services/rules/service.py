"""The rules service: one rule store, two front doors (the HTTP API and the Firestore listener).

Rules are checked (`RuleError.reasons`: every problem, one sentence each), written
to the store, applied to the live `RuleIndex` of the `RuleEngine` and recorded as a
`changed` history line: a change acts on the next reading, no restart, and a
replaced rule keeps its budget, cooldown, hysteresis and manual hold. At start
the stored rules are loaded, and today's fires and recent manual commands are
replayed so the safety limits survive a restart.

The service needs only the broker, its store and the devices: it keeps watering
while the Planty server and the cloud are unreachable.

For the Firestore connector (and any other front door):
`upsert_rule(dict, origin=)`, `put_rule(Rule | dict, origin=)`, `delete_rule(id)`,
`set_thresholds(device_id, dict, origin=)`; refusals raise `RuleError` (a
ValueError) with `.reasons`, an unknown device `UnknownDeviceError` (a LookupError).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

from planty_broker.config import RuleSettings
from planty_broker.domain.commands import CommandError, prepare
from planty_broker.domain.rules.eval import RuleState
from planty_broker.domain.rules.model import (
    ALL_DEVICES,
    Rule,
    RuleError,
    parse_rule,
    problems_for_record,
    rule_to_dict,
)
from planty_broker.domain.rules.records import RuleEvent, StoredRule
from planty_broker.domain.rules.thresholds import (
    rules_to_thresholds,
    threshold_rule_prefix,
    thresholds_to_rules,
)
from planty_broker.errors import PlantyError
from planty_broker.ports.store import RuleStore
from planty_broker.services.bus import Bus, DevicesChanged
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.services.rules.engine import RuleEngine, Submitter
from planty_broker.services.rules.info import RuleInfo, changed_line, machine_timezone

log = logging.getLogger(__name__)

ORIGIN_DEVICE_REMOVED = "device-removed"


class RuleNotFoundError(PlantyError, LookupError):
    def __str__(self) -> str:
        return f"no rule with id {self.args[0]!r}"


class RuleExistsError(PlantyError, ValueError):
    """`create` of a rule whose id is taken (the API's POST answers 409)."""


class RulesService:
    """Rule CRUD, `set_thresholds`, history; the engine does the evaluating."""

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
        max_on_seconds: float | None = None,
        max_on_by_actuator: Mapping[str, float] | None = None,
    ) -> None:
        """`max_on_seconds`: the outbox's actuator limit (`commands.max_on_seconds`); a rule
        whose command the outbox would refuse is refused when it is put."""
        self._store = store
        self._max_on_s = max_on_seconds
        self._max_on_by_actuator = dict(max_on_by_actuator or {})
        self._bus = bus
        self._registry = registry
        self.settings = settings
        self.tz = settings.timezone or machine_timezone()
        self._clock = clock
        self.engine = RuleEngine(
            store, bus, registry, settings, commands=commands, clock=clock, notify=notify
        )
        self._info: dict[str, RuleInfo] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self.unusable: dict[str, list[str]] = {}  # stored rules that could not be loaded

    # ------------------------------------------------------------ lifecycle

    async def start(self, restore_holds_from: Any = None) -> None:
        """Load the stored rules, restore fires and holds, start evaluating."""
        for row in await self._store.list_rules():
            try:
                rule = parse_rule(row.data, default_tz=self.tz)
            except RuleError as exc:
                self.unusable[row.id] = list(exc.reasons)
                log.error(
                    "rule %s in the store cannot be used (%s); it is not evaluated: "
                    "put it again or delete it (planty rules delete %s)",
                    row.id,
                    exc,
                    row.id,
                )
                continue
            self._info[rule.id] = RuleInfo(rule, row.origin, row.created_ms, row.updated_ms)
        self.engine.index.replace_all([i.rule for i in self._info.values()])
        await self.engine.start(restore_holds_from)
        self._unsubscribe = self._bus.subscribe(DevicesChanged, self._on_devices_changed)
        log.info("rules: %d loaded (time zone %s)", len(self._info), self.tz)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        await self.engine.stop()

    # ------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._info)

    def rules(self, device_id: str | None = None) -> list[RuleInfo]:
        """Every rule by id, or those that watch one device (its own, its groups', `"*"`)."""
        found = [
            info
            for info in self._info.values()
            if device_id is None or info.rule.applies_to(device_id)
        ]
        return sorted(found, key=lambda i: i.rule.id)

    def get(self, rule_id: str) -> RuleInfo | None:
        return self._info.get(rule_id)

    def require(self, rule_id: str) -> RuleInfo:
        info = self._info.get(rule_id)
        if info is None:
            raise RuleNotFoundError(rule_id)
        return info

    def states(self, rule_id: str) -> dict[str, RuleState]:
        """device id -> live state of one rule (do not mutate)."""
        return self.engine.index.states(rule_id)

    def thresholds(self, device_id: str) -> dict[str, dict[str, float]]:
        """The `set_thresholds` view of a device: `{"soil_moisture": {"min": 0.3}, ...}`."""
        self._registry.require(device_id)
        return rules_to_thresholds([i.rule for i in self._threshold_rules(device_id)])

    def threshold_rules(self, device_id: str) -> list[RuleInfo]:
        return self._threshold_rules(device_id)

    def _threshold_rules(self, device_id: str) -> list[RuleInfo]:
        prefix = threshold_rule_prefix(device_id)
        return sorted(
            (i for i in self._info.values() if i.rule.id.startswith(prefix)),
            key=lambda i: i.rule.id,
        )

    async def history(
        self,
        rule_id: str,
        *,
        device_id: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[RuleEvent]:
        """A rule's history lines, newest first (also for a rule deleted since)."""
        return await self._store.rule_history(
            rule_id,
            device_id=device_id,
            since_ms=since_ms,
            until_ms=until_ms,
            before_id=before_id,
            limit=limit,
        )

    # ------------------------------------------------------------ checking

    def parse(self, data: Mapping[str, Any]) -> Rule:
        """A rule from JSON, with the broker's zone and `[rules]` defaults; RuleError if bad."""
        if not isinstance(data, Mapping):
            raise RuleError(['a rule must be a JSON object like {"id": ..., "devices": ...}'])
        s = self.settings
        return parse_rule(
            {"hold_s": s.hold_s, "stale_after_s": s.stale_after_s, **data}, default_tz=self.tz
        )

    def problems(self, rule: Rule) -> list[str]:
        """Why `rule` cannot work: its command would be refused by the outbox, or a device it
        names is unknown or lacks the reading or the actuator."""
        reasons = self._command_problems(rule)
        if rule.devices == (ALL_DEVICES,):
            return reasons
        for device_id in rule.devices:
            record = self._registry.get(device_id)
            if record is None:
                reasons.append(
                    f"device '{device_id}' is not registered; add it first "
                    f"(planty devices add {device_id}) or fix the id"
                )
            else:
                reasons += problems_for_record(rule, record)
        return reasons

    def _command_problems(self, rule: Rule) -> list[str]:
        """The outbox's own argument checks (e.g. `args.seconds` above the safety limit)."""
        if self._max_on_s is None:
            return []
        actuators = (rule.actuator,) if rule.actuator else ()
        try:
            prepare(
                rule.action, dict(rule.args), actuators, self._max_on_s, self._max_on_by_actuator
            )
        except CommandError as exc:
            return [f"{exc}: the command outbox would refuse every fire of rule {rule.id!r}"]
        return []

    def check(self, rule_or_data: Rule | Mapping[str, Any]) -> Rule:
        """The rule, parsed if needed and checked against its devices; RuleError otherwise."""
        rule = rule_or_data if isinstance(rule_or_data, Rule) else self.parse(rule_or_data)
        reasons = self.problems(rule)
        if reasons:
            raise RuleError(reasons)
        return rule

    # ------------------------------------------------------------ changing

    async def put_rule(
        self, rule: Rule | Mapping[str, Any], *, origin: str = "api", create: bool = False
    ) -> RuleInfo:
        """Add or replace a rule (same id: its per-device state carries over).

        `create`: refuse an id that exists (RuleExistsError). An identical rule is
        left as it is (no history line), so re-deliveries are harmless.
        """
        checked = self.check(rule)
        async with self._lock:
            old = self._info.get(checked.id)
            if create and old is not None:
                raise RuleExistsError(
                    f"rule {checked.id!r} already exists; PUT /api/v1/rules/{checked.id} "
                    "replaces it"
                )
            if old is not None and old.rule == checked:
                return old
            now = self._clock()
            info = RuleInfo(checked, origin, old.created_ms if old else now, now)
            change = "updated" if old is not None else "created"
            await self._store.save_rules([self._row(info)])
            self._apply(put=[info])
            await self.engine.record_now([changed_line(checked, change, origin, now)])
        log.info("rule %s %s by %s: %s", checked.id, change, origin, checked.describe())
        return info

    async def upsert_rule(self, data: Mapping[str, Any], *, origin: str = "api") -> RuleInfo:
        """`put_rule` for a JSON object (the broker's zone and defaults fill what it omits)."""
        return await self.put_rule(data, origin=origin)

    async def patch_rule(
        self, rule_id: str, changes: Mapping[str, Any], *, origin: str = "api"
    ) -> RuleInfo:
        """Change some fields of a rule (e.g. `{"enabled": false}` or a new threshold)."""
        info = self.require(rule_id)
        if "id" in changes and changes["id"] != rule_id:
            raise RuleError([f"id {changes['id']!r} differs from the rule's id {rule_id!r}"])
        return await self.put_rule({**rule_to_dict(info.rule), **changes}, origin=origin)

    async def delete_rule(self, rule_id: str, *, origin: str = "api") -> bool:
        """Delete a rule (its history stays); False if there was none."""
        async with self._lock:
            info = self._info.get(rule_id)
            if info is None:
                return False
            now = self._clock()
            await self._store.save_rules([], delete=[rule_id])
            self._apply(remove=[rule_id])
            await self.engine.record_now([changed_line(info.rule, "deleted", origin, now)])
        log.info("rule %s deleted by %s", rule_id, origin)
        return True

    async def set_thresholds(
        self, device_id: str, thresholds: Mapping[str, Any], *, origin: str = "api"
    ) -> list[RuleInfo]:
        """The original design's `set_thresholds`: the device's threshold rules become exactly
        what `thresholds` expands to (a reading left out loses its rules; `{}` clears them)."""
        device = self._registry.require(device_id)
        s = self.settings
        rules = thresholds_to_rules(
            device_id,
            thresholds,
            device.actuators or None,
            sensors=device.sensors or None,
            tz=self.tz,
            hold_s=s.hold_s,
            stale_after_s=s.stale_after_s,
        )
        reasons = [p for r in rules for p in self._command_problems(r)]
        if reasons:
            raise RuleError(reasons)
        async with self._lock:
            wanted = {r.id for r in rules}
            gone = [i.rule for i in self._threshold_rules(device_id) if i.rule.id not in wanted]
            now = self._clock()
            put: list[RuleInfo] = []
            history: list[RuleEvent] = []
            for rule in rules:
                old = self._info.get(rule.id)
                if old is not None and old.rule == rule:
                    continue
                put.append(RuleInfo(rule, origin, old.created_ms if old else now, now))
                change = "updated" if old is not None else "created"
                history.append(changed_line(rule, change, origin, now))
            history += [changed_line(r, "deleted", origin, now) for r in gone]
            if put or gone:
                await self._store.save_rules(
                    [self._row(i) for i in put], delete=[r.id for r in gone]
                )
                self._apply(put=put, remove=[r.id for r in gone])
                await self.engine.record_now(history)
                log.info("thresholds of %s set by %s: %s", device_id, origin, dict(thresholds))
            return [self._info[r.id] for r in rules]

    # ------------------------------------------------------------ internals

    def _apply(self, put: Sequence[RuleInfo] = (), remove: Sequence[str] = ()) -> None:
        index = self.engine.index
        for rule_id in remove:
            self._info.pop(rule_id, None)
            index.remove(rule_id)
        for info in put:
            self._info[info.rule.id] = info
            index.put(info.rule)
            self.unusable.pop(info.rule.id, None)

    @staticmethod
    def _row(info: RuleInfo) -> StoredRule:
        return StoredRule(
            info.rule.id, rule_to_dict(info.rule), info.origin, info.created_ms, info.updated_ms
        )

    def _on_devices_changed(self, event: DevicesChanged) -> None:
        if event.change != "removed":
            return
        self.engine.index.forget_device(event.device_id)
        task = asyncio.get_running_loop().create_task(self._device_removed(event.device_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _device_removed(self, device_id: str) -> None:
        """A removed device takes its own rules with it and leaves the groups it was in."""
        async with self._lock:
            now = self._clock()
            put: list[RuleInfo] = []
            gone: list[Rule] = []
            for info in list(self._info.values()):
                devices = info.rule.devices
                if device_id not in devices:
                    continue
                if devices == (device_id,):
                    gone.append(info.rule)
                    continue
                data = rule_to_dict(info.rule)
                data["devices"] = [d for d in devices if d != device_id]
                rule = parse_rule(data, default_tz=self.tz)
                put.append(RuleInfo(rule, info.origin, info.created_ms, now))
            if not put and not gone:
                return
            history = [changed_line(r, "deleted", ORIGIN_DEVICE_REMOVED, now) for r in gone]
            history += [changed_line(i.rule, "updated", ORIGIN_DEVICE_REMOVED, now) for i in put]
            try:
                await self._store.save_rules(
                    [self._row(i) for i in put], delete=[r.id for r in gone]
                )
            except Exception as exc:
                log.warning("rules of removed device %s not deleted yet: %s", device_id, exc)
                return
            self._apply(put=put, remove=[r.id for r in gone])
            await self.engine.record_now(history)
        log.info(
            "device %s removed: %d of its rules deleted, %d groups updated",
            device_id,
            len(gone),
            len(put),
        )


async def start_rules(svc: Any, stack: AsyncExitStack) -> RulesService | None:
    """Start the rules service (after the outbox, before the MQTT link connects, so the first
    readings are evaluated) and set it as `svc.rules`; None when disabled."""
    s = svc.settings
    if not s.rules.enabled:
        log.info("rules: disabled ([rules] enabled = false)")
        return None
    events = svc.events
    rules = RulesService(
        svc.store,
        svc.bus,
        svc.registry,
        s.rules,
        commands=svc.commands,
        notify=events.notify if events is not None else None,
        max_on_seconds=s.commands.max_on_seconds,
        max_on_by_actuator=s.commands.max_on_seconds_by_actuator,
    )
    dead = getattr(svc, "dead_letters", None)
    if dead is not None:
        rules.engine.history.set_dead_letter(
            dead.writer_sink(lambda e: f"rules/{e.rule_id}/history")
        )
    await rules.start(restore_holds_from=svc.store)
    stack.push_async_callback(rules.stop)
    svc.rules = rules
    return rules
