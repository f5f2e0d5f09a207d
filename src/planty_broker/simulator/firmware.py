"""The device-side command logic of PROTOCOL.md, without any I/O.

Dedup by command id (a duplicate gets the first ack again and runs nothing),
deadline check, built-ins (`ping`, `read`, `config`) and actuator verbs. Every
action that really ran is appended to an execution log, which is how tests
prove that an action ran exactly once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from planty_broker.protocol import Ack, Command, split_action
from planty_broker.simulator.plant import PlantModel
from planty_broker.simulator.provision import SimulatorError

AUTO_OFF_SLACK_S = 0.002  # timers fire on the monotonic clock; the firmware reads wall time


class Source(StrEnum):
    """Why an action ran: a command from the broker, or the device's own auto-off timer."""

    COMMAND = "command"
    AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Execution:
    """One action that ran on the device, in order (`n` counts from 1 over the device's life)."""

    n: int
    at: float  # unix seconds
    action: str
    command_id: str | None
    args: dict[str, Any]
    source: Source = Source.COMMAND


@dataclass(frozen=True, slots=True)
class ActuatorState:
    """An actuator as the device sees it; `off_at` is the unix time of a pending auto-off."""

    name: str
    on: bool = False
    value: float = 0.0
    off_at: float | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What handling one command produced; `ack` is what goes on the wire."""

    ack: Ack
    duplicate: bool = False
    expired: bool = False
    executed: bool = False
    interval_changed: bool = False
    auto_off_at: float | None = None


class CommandRefusedError(SimulatorError, ValueError):
    """The device cannot run this command; the message becomes the ack's `error`."""


@dataclass(slots=True)
class Firmware:
    """Command handling and actuator state of one device; `clock` returns unix seconds."""

    sensors: tuple[str, ...]
    actuators: tuple[str, ...]
    interval_s: float
    clock: Callable[[], float]
    dedup_memory: int = 256
    plant: PlantModel = field(default_factory=PlantModel)
    log: list[Execution] = field(default_factory=list)
    _states: dict[str, ActuatorState] = field(default_factory=dict)
    _seen: OrderedDict[str, Ack] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._states = {name: ActuatorState(name) for name in self.actuators}

    # ------------------------------------------------------------ state

    def levels(self) -> dict[str, float]:
        """Actuator levels (0..1) driving the plant model."""
        return {n: (s.value if s.on else 0.0) for n, s in self._states.items()}

    def actuator(self, name: str) -> ActuatorState:
        return self._states[name]

    def readings(self) -> dict[str, float]:
        return self.plant.readings(self.clock(), self.levels(), self.sensors)

    def power_cycle(self) -> None:
        """A reboot: every actuator starts off. The dedup memory survives (kept in RTC memory),
        so a command re-sent across a reboot still runs only once."""
        self._states = {name: ActuatorState(name) for name in self.actuators}

    # ------------------------------------------------------------ commands

    def handle(self, cmd: Command) -> Outcome:
        """Handle one received command: dedup first, then deadline, then run it."""
        first = self._seen.get(cmd.id)
        if first is not None:
            self._seen.move_to_end(cmd.id)
            return Outcome(first, duplicate=True)
        now = self.clock()
        if cmd.exp is not None and cmd.exp < int(now * 1000):
            return Outcome(self._remember(Ack(cmd.id, ok=False, error="expired")), expired=True)
        try:
            result, interval_changed, off_at = self._run(cmd, now)
        except CommandRefusedError as exc:
            return Outcome(self._remember(Ack(cmd.id, ok=False, error=str(exc))))
        self._append(now, cmd.action, cmd.id, cmd.args, Source.COMMAND)
        ack = self._remember(Ack(cmd.id, ok=True, result=result))
        return Outcome(ack, executed=True, interval_changed=interval_changed, auto_off_at=off_at)

    def expire_due(self) -> list[str]:
        """Switch off every actuator whose `seconds` ran out; returns their names."""
        now = self.clock()
        done: list[str] = []
        for name, state in self._states.items():
            if state.off_at is not None and state.off_at <= now + AUTO_OFF_SLACK_S:
                self.plant.advance(now, self.levels())
                self._states[name] = ActuatorState(name)
                self._append(now, f"{name}.off", None, {}, Source.AUTO)
                done.append(name)
        return done

    def _remember(self, ack: Ack) -> Ack:
        self._seen[ack.id] = ack
        while len(self._seen) > self.dedup_memory:
            self._seen.popitem(last=False)
        return ack

    def _append(
        self, now: float, action: str, cid: str | None, args: dict[str, Any], src: Source
    ) -> None:
        self.log.append(Execution(len(self.log) + 1, now, action, cid, dict(args), src))

    def _run(self, cmd: Command, now: float) -> tuple[dict[str, Any] | None, bool, float | None]:
        actuator, verb = split_action(cmd.action)
        if actuator is None:
            if verb == "ping":
                return None, False, None
            if verb == "read":
                return (
                    {"readings": self.plant.readings(now, self.levels(), self.sensors)},
                    False,
                    None,
                )
            if verb == "config":
                return self._config(cmd.args), True, None
            raise CommandRefusedError(self._unknown(cmd.action))
        if actuator not in self._states:
            raise CommandRefusedError(self._unknown(cmd.action))
        self.plant.advance(now, self.levels())  # integrate the old levels up to this change
        if verb == "on":
            seconds = cmd.args.get("seconds")
            duration = _as_number(seconds)
            if seconds is not None and (duration is None or duration <= 0):
                raise CommandRefusedError(f"{cmd.action}: seconds must be a positive number")
            off_at = now + duration if duration is not None else None
            self._states[actuator] = ActuatorState(actuator, on=True, value=1.0, off_at=off_at)
            result: dict[str, Any] = {"on": True, "value": 1.0}
            if seconds is not None:
                result["seconds"] = seconds
            return result, False, off_at
        if verb == "off":
            self._states[actuator] = ActuatorState(actuator)
            return {"on": False, "value": 0.0}, False, None
        if verb == "set":
            level = _as_number(cmd.args.get("value"))
            if level is None or not 0.0 <= level <= 1.0:
                raise CommandRefusedError(f"{cmd.action}: value must be a number from 0 to 1")
            self._states[actuator] = ActuatorState(actuator, on=level > 0, value=level)
            return {"on": level > 0, "value": level}, False, None
        raise CommandRefusedError(self._unknown(cmd.action))

    def _config(self, args: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(args) - {"interval_s"})
        if unknown:
            raise CommandRefusedError(
                f"config: unknown key(s) {', '.join(unknown)}; supported: interval_s"
            )
        if "interval_s" not in args:
            raise CommandRefusedError("config: nothing to change; supported: interval_s")
        interval = _as_number(args["interval_s"])
        if interval is None or interval <= 0:
            raise CommandRefusedError("config: interval_s must be a positive number")
        self.interval_s = interval
        return {"interval_s": args["interval_s"]}

    def _unknown(self, action: str) -> str:
        verbs = [f"{a}.{v}" for a in self.actuators for v in ("on", "off", "set")]
        return (
            f"unknown action {action!r}; supported: {', '.join(['ping', 'read', 'config', *verbs])}"
        )


def _as_number(value: object) -> float | None:
    """A finite JSON number as float; None for anything else (bools included)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
