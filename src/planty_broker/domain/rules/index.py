"""`RuleIndex`: the live rule set, keyed for the hot path device_id -> reading -> [(rule, state)].

A reading that no rule watches costs two dict lookups. A watched reading inside
its bucket's quiet band (no rule would fire, suppress, or re-arm; see
`rules_eval.quiet_band`) costs one more comparison. Per-device maps are built
lazily on a device's first reading and dropped when a rule touching that device
changes; the `RuleState`s live apart from those maps, so replacing a rule (same
id) keeps its hysteresis, cooldown, today's budget and any manual hold. Pure and
single-threaded: the rules service owns one index and calls it from one task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

from planty_broker.domain.rules.eval import (
    Decision,
    RuleState,
    check_silence,
    evaluate,
    note_manual_command,
    quiet_band,
    record_fire,
)
from planty_broker.domain.rules.model import ALL_DEVICES, Rule
from planty_broker.protocol import split_action

Entry = tuple[Rule, RuleState]
ActuatorsOf = Callable[[str], Sequence[str] | None]
_NOTHING: tuple[Decision, ...] = ()


class _Bucket:
    """The rules on one reading of one device, and the band of values where none has work."""

    __slots__ = ("entries", "hi", "last_seen_ms", "lo")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.lo = -math.inf
        self.hi = math.inf
        self.last_seen_ms: int | None = None

    def retune(self) -> None:
        """Intersect the rules' quiet bands; call after any of their states changed."""
        lo, hi = -math.inf, math.inf
        for rule, state in self.entries:
            band_lo, band_hi = quiet_band(rule, state)
            lo = max(lo, band_lo)
            hi = min(hi, band_hi)
        self.lo, self.hi = lo, hi

    def sync_seen(self) -> None:
        """Hand the bucket's last-seen time to its states (the fast path only stamps the bucket)."""
        seen = self.last_seen_ms
        if seen is not None:
            for _, state in self.entries:
                if state.last_seen_ms is None or state.last_seen_ms < seen:
                    state.last_seen_ms = seen


class RuleIndex:
    """Rules by device and reading, with one `RuleState` per (rule, device).

    `actuators_of(device_id)` (optional) returns what a device declared, or None if
    unknown; a group or `"*"` rule is skipped on a device known to lack its
    actuator. Single-device rules are checked by the API before they get here.
    """

    __slots__ = ("_actuators_of", "_by_device", "_devices", "_rules", "_states", "_wildcard")

    def __init__(self, actuators_of: ActuatorsOf | None = None) -> None:
        self._actuators_of = actuators_of
        self._rules: dict[str, Rule] = {}
        self._by_device: dict[str, list[str]] = {}  # device id -> ids of rules naming it
        self._wildcard: list[str] = []  # ids of "*" rules
        self._states: dict[str, dict[str, RuleState]] = {}  # rule id -> device id -> state
        self._devices: dict[str, dict[str, _Bucket]] = {}  # the lazily built hot-path map

    # ------------------------------------------------------------ rule set

    def put(self, rule: Rule) -> None:
        """Add a rule or replace the one with the same id (its per-device state is kept)."""
        old = self._rules.pop(rule.id, None)
        if old is not None:
            self._unlink(old)
        self._rules[rule.id] = rule
        states = self._states.setdefault(rule.id, {})
        if rule.devices == (ALL_DEVICES,):
            self._wildcard.append(rule.id)
        else:
            for device_id in list(states):
                if device_id not in rule.devices:
                    del states[device_id]
            for device_id in rule.devices:
                self._by_device.setdefault(device_id, []).append(rule.id)
                if self._compatible(rule, device_id):  # start the silence clock now
                    states.setdefault(device_id, RuleState(device_id))
        self._invalidate(rule, old)

    def remove(self, rule_id: str) -> Rule | None:
        """Drop a rule and its states; returns it, or None if it was not there."""
        rule = self._rules.pop(rule_id, None)
        if rule is not None:
            self._unlink(rule)
            self._states.pop(rule_id, None)
            self._invalidate(rule, None)
        return rule

    def replace_all(self, rules: Sequence[Rule]) -> None:
        """Load a whole rule set (start-up, or a full resync); states of kept ids survive."""
        wanted = {r.id for r in rules}
        for rule_id in [i for i in self._rules if i not in wanted]:
            self.remove(rule_id)
        for rule in rules:
            self.put(rule)

    def get(self, rule_id: str) -> Rule | None:
        return self._rules.get(rule_id)

    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._rules

    def _unlink(self, rule: Rule) -> None:
        if rule.devices == (ALL_DEVICES,):
            self._wildcard.remove(rule.id)
            return
        for device_id in rule.devices:
            ids = self._by_device[device_id]
            ids.remove(rule.id)
            if not ids:
                del self._by_device[device_id]

    def _invalidate(self, rule: Rule, old: Rule | None) -> None:
        if rule.devices == (ALL_DEVICES,) or (old is not None and old.devices == (ALL_DEVICES,)):
            self._sync_seen()
            self._devices.clear()
            return
        for device_id in (*rule.devices, *(old.devices if old is not None else ())):
            self._drop(device_id)

    # ------------------------------------------------------------ devices

    def invalidate_device(self, device_id: str) -> None:
        """The device declared new sensors/actuators: rebuild its map on its next reading."""
        self._drop(device_id)

    def forget_device(self, device_id: str) -> None:
        """The device was removed: drop its map and every rule state kept for it."""
        self._devices.pop(device_id, None)
        for states in self._states.values():
            states.pop(device_id, None)

    def _compatible(self, rule: Rule, device_id: str) -> bool:
        if not rule.is_selector or self._actuators_of is None or rule.actuator is None:
            return True
        actuators = self._actuators_of(device_id)
        return actuators is None or rule.actuator in actuators

    def _rule_ids_for(self, device_id: str) -> list[str]:
        return [*self._by_device.get(device_id, ()), *self._wildcard]

    def _build(self, device_id: str) -> dict[str, _Bucket]:
        by_reading: dict[str, _Bucket] = {}
        for rule_id in self._rule_ids_for(device_id):
            rule = self._rules[rule_id]
            if rule.enabled and self._compatible(rule, device_id):
                state = self._states[rule_id].setdefault(device_id, RuleState(device_id))
                by_reading.setdefault(rule.reading, _Bucket()).entries.append((rule, state))
        for bucket in by_reading.values():
            bucket.retune()
        self._devices[device_id] = by_reading
        return by_reading

    # ------------------------------------------------------------ hot path

    def lookup(self, device_id: str, reading: str) -> list[Entry]:
        """The enabled (rule, state) pairs watching this reading of this device."""
        by_reading = self._devices.get(device_id)
        if by_reading is None:
            if not self._rules:
                return []
            by_reading = self._build(device_id)
        bucket = by_reading.get(reading)
        return [] if bucket is None else list(bucket.entries)

    def evaluate(
        self, device_id: str, values: Mapping[str, float], reading_ts_ms: int, now_ms: int
    ) -> Sequence[Decision]:
        """Run every matching rule on one telemetry message; returns fires and history events.

        The same decisions as `rules_eval.evaluate` per rule, keeping those with
        `event` set. A value inside its bucket's quiet band (where no rule has work,
        the common case) costs one comparison and no call.
        """
        by_reading = self._devices.get(device_id)
        if by_reading is None:
            if not self._rules:
                return _NOTHING
            by_reading = self._build(device_id)
        if not by_reading:
            return _NOTHING
        out: list[Decision] | None = None
        for name, value in values.items():
            bucket = by_reading.get(name)
            if bucket is None:
                continue
            bucket.last_seen_ms = now_ms
            if bucket.lo <= value <= bucket.hi:
                continue
            for rule, state in bucket.entries:
                decision = evaluate(rule, state, value, reading_ts_ms, now_ms)
                if decision is not None and decision.event:
                    if out is None:
                        out = [decision]
                    else:
                        out.append(decision)
            bucket.retune()
        return _NOTHING if out is None else out

    # ------------------------------------------------------------ side doors

    def note_manual_command(self, device_id: str, action: str, now_ms: int) -> list[str]:
        """A manual command reached the device: hold its rules on that actuator; returns their ids.

        Call it for commands from the API/Firestore only, never for the rules' own.
        """
        actuator = split_action(action)[0]
        if actuator is None:
            return []
        held = []
        for rule_id in self._rule_ids_for(device_id):
            rule = self._rules[rule_id]
            if rule.actuator == actuator and self._compatible(rule, device_id):
                state = self._states[rule_id].setdefault(device_id, RuleState(device_id))
                note_manual_command(state, now_ms, rule.hold_s)
                held.append(rule_id)
        return held

    def restore_fire(self, rule_id: str, device_id: str, at_ms: int) -> None:
        """Replay a fire from the history at start-up, so budgets and cooldowns survive restarts."""
        rule = self._rules.get(rule_id)
        if rule is not None and rule.applies_to(device_id):
            state = self._states[rule_id].setdefault(device_id, RuleState(device_id))
            record_fire(rule, state, at_ms)
            self._drop(device_id)  # its quiet bands changed

    def silent_sensors(self, now_ms: int) -> list[Decision]:
        """A warning per (rule, device) whose sensor went silent for the rule's `stale_after_s`."""
        self._sync_seen()
        out = []
        for rule, state in self.entries():
            decision = check_silence(rule, state, now_ms)
            if decision is not None:
                out.append(decision)
        return out

    def entries(self) -> Iterator[Entry]:
        """Every (rule, state) pair that exists so far (states of `"*"` rules appear lazily)."""
        for rule_id, states in self._states.items():
            rule = self._rules[rule_id]
            for state in states.values():
                yield rule, state

    def state(self, rule_id: str, device_id: str) -> RuleState | None:
        """The live state of one rule on one device (for the API's rule status; do not mutate)."""
        for bucket in self._devices.get(device_id, {}).values():
            bucket.sync_seen()
        return self._states.get(rule_id, {}).get(device_id)

    def states(self, rule_id: str) -> dict[str, RuleState]:
        """device id -> state for one rule (a copy of the mapping; the states are live)."""
        self._sync_seen()
        return dict(self._states.get(rule_id, {}))

    def _drop(self, device_id: str) -> None:
        """Forget a device's hot-path map (rebuilt on its next reading), keeping last-seen times."""
        by_reading = self._devices.pop(device_id, None)
        if by_reading is not None:
            for bucket in by_reading.values():
                bucket.sync_seen()

    def _sync_seen(self) -> None:
        for by_reading in self._devices.values():
            for bucket in by_reading.values():
                bucket.sync_seen()
