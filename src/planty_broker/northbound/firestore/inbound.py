"""Documents the server writes, applied through the broker's services (live, no restart).

- `rules/{id}` -> the rules service (`applied` written back: ok, or why not);
- `devices/{id}`.`thresholds` -> `set_thresholds`, `.read_interval_s` -> a `config` command;
- `commands/{id}` -> the command outbox with that id (the event-log sink writes
  its state, result and times back into the same document);
- `brokers/{id}`.`config` -> heartbeat, statistics and read schedule.

Every handler is idempotent: a re-attached listener delivers every document
again, and the broker's own writes into these documents come back as changes,
so each compares the server's fields with what it applied last.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from planty_broker.domain.rules.model import RuleError
from planty_broker.northbound.firestore import model
from planty_broker.northbound.firestore.bridges import CommandsApi, RulesApi
from planty_broker.northbound.firestore.buffer import DocBuffer
from planty_broker.northbound.firestore.port import SERVER_TIME, ChangeKind, Snapshot
from planty_broker.services.registry import DeviceRegistry

log = logging.getLogger(__name__)

ORIGIN = "firestore"  # command docs mirrored back by the sink
ORIGIN_INTERNAL = "firestore-config"  # commands the connector sends itself (not mirrored)
MAX_ERROR = 500
MAX_SEEN = 50_000  # command document ids remembered (FIFO)


def _fingerprint(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def _error(exc: BaseException) -> str:
    return str(exc)[:MAX_ERROR] or type(exc).__name__


@dataclass(slots=True)
class BrokerConfig:
    """What the server may set in `brokers/{id}.config` (defaults from the settings)."""

    heartbeat_s: float
    stats_every_s: float
    read_every_s: dict[str, float] = field(default_factory=dict)  # device -> `read` period

    def to_doc(self) -> dict[str, Any]:
        return {
            "heartbeat_s": self.heartbeat_s,
            "stats_every_s": self.stats_every_s,
            "read_every_s": dict(self.read_every_s),
        }


def _positive(value: object) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


class Inbound:
    """The handlers of the connector's listeners; see the module docstring."""

    def __init__(
        self,
        paths: model.Paths,
        buffer: DocBuffer,
        registry: DeviceRegistry,
        config: BrokerConfig,
        *,
        commands: CommandsApi | None,
        rules: RulesApi | None,
        wake: Callable[[], None],
    ) -> None:
        self._paths = paths
        self._buffer = buffer
        self._registry = registry
        self.config = config
        self._commands = commands
        self._rules = rules
        self._wake = wake
        self._rule_seen: dict[str, str] = {}
        self._rule_ids: set[str] | None = None  # rules that came from Firestore
        self._thresholds: dict[str, str] = {}
        self._intervals: dict[str, float] = {}
        # command documents handled (FIFO, at most MAX_SEEN): one forgotten is as after a
        # restart, where the outbox's own id check keeps a command from running twice
        self._commands_seen: dict[str, None] = {}
        self._config_seen = ""
        self.applied = 0
        self.refused = 0

    def _seen(self, command_id: str) -> None:
        self._commands_seen[command_id] = None
        if len(self._commands_seen) > MAX_SEEN:
            del self._commands_seen[next(iter(self._commands_seen))]

    def _write(self, path: str, data: Mapping[str, Any]) -> None:
        self._buffer.set(path, data)
        self._wake()

    # ------------------------------------------------------------ rules

    async def on_rules(self, snap: Snapshot) -> None:
        if self._rule_ids is None:
            self._rule_ids = await self._known_rule_ids()
        for ch in snap.changes:
            if ch.kind is ChangeKind.REMOVED or ch.data is None:
                await self._drop_rule(ch.doc_id)
            else:
                await self._put_rule(ch.doc_id, ch.data)
        for gone in sorted(self._rule_ids - snap.ids):  # deleted while we were not listening
            await self._drop_rule(gone)

    async def _known_rule_ids(self) -> set[str]:
        """Rules that came from Firestore before (the rules service keeps their origin)."""
        if self._rules is None:
            return set()
        return {i.rule.id for i in self._rules.rules() if getattr(i, "origin", None) == ORIGIN}

    async def _put_rule(self, rule_id: str, data: Mapping[str, Any]) -> None:
        fields = model.strip(data, {model.RULE_STATUS})
        fields["id"] = rule_id
        fp = _fingerprint(fields)
        if self._rule_seen.get(rule_id) == fp:
            return  # our own `applied` write, or a re-delivery
        self._rule_seen[rule_id] = fp
        if self._rules is None:
            self._refuse(self._paths.rule(rule_id), "this broker has no rules service")
            return
        try:
            await self._rules.put_rule(fields, origin=ORIGIN)
        except (RuleError, ValueError, LookupError) as exc:
            reasons = list(exc.reasons) if isinstance(exc, RuleError) else [_error(exc)]
            self._refuse(self._paths.rule(rule_id), "; ".join(reasons), reasons=reasons)
            return
        assert self._rule_ids is not None
        self._rule_ids.add(rule_id)
        self.applied += 1
        self._write(
            self._paths.rule(rule_id),
            {model.RULE_STATUS: {"ok": True, "error": None, "reasons": [], "at": model.now()}},
        )
        log.info("firestore: rule %s applied", rule_id)

    def _refuse(self, path: str, error: str, reasons: list[str] | None = None) -> None:
        self.refused += 1
        log.warning("firestore: %s refused: %s", path, error)
        self._write(
            path,
            {
                model.RULE_STATUS: {
                    "ok": False,
                    "error": error[:MAX_ERROR],
                    "reasons": reasons or [error[:MAX_ERROR]],
                    "at": model.now(),
                }
            },
        )

    async def _drop_rule(self, rule_id: str) -> None:
        self._rule_seen.pop(rule_id, None)
        assert self._rule_ids is not None
        if rule_id not in self._rule_ids:
            return
        self._rule_ids.discard(rule_id)
        if self._rules is not None and await self._rules.delete_rule(rule_id, origin=ORIGIN):
            log.info("firestore: rule %s deleted", rule_id)

    # ------------------------------------------------------------ devices

    async def on_devices(self, snap: Snapshot) -> None:
        for ch in snap.changes:
            if ch.kind is ChangeKind.REMOVED or ch.data is None:
                self._thresholds.pop(ch.doc_id, None)
                self._intervals.pop(ch.doc_id, None)
                continue
            if ch.doc_id not in self._registry:
                continue
            await self._thresholds_changed(ch.doc_id, ch.data)
            await self._interval_changed(ch.doc_id, ch.data)

    async def _thresholds_changed(self, device_id: str, data: Mapping[str, Any]) -> None:
        had = device_id in self._thresholds
        if "thresholds" not in data and not had:
            return  # never set from Firestore: leave thresholds set through the API alone
        raw = data.get("thresholds") or {}
        fp = _fingerprint(raw) if isinstance(raw, Mapping) else repr(raw)
        if self._thresholds.get(device_id) == fp:
            return
        self._thresholds[device_id] = fp
        path = self._paths.device(device_id)
        if self._rules is None:
            status = {"ok": False, "error": "this broker has no rules service", "at": model.now()}
        elif not isinstance(raw, Mapping):
            status = {"ok": False, "error": "thresholds must be a map", "at": model.now()}
        else:
            try:
                await self._rules.set_thresholds(device_id, raw, origin=ORIGIN)
                status = {"ok": True, "error": None, "at": model.now()}
                self.applied += 1
                log.info("firestore: thresholds of %s applied", device_id)
            except (RuleError, ValueError, LookupError) as exc:
                status = {"ok": False, "error": _error(exc), "at": model.now()}
        if not status["ok"]:
            self.refused += 1
            log.warning("firestore: thresholds of %s refused: %s", device_id, status["error"])
        self._write(path, {model.THRESHOLDS_STATUS: status})

    async def _interval_changed(self, device_id: str, data: Mapping[str, Any]) -> None:
        if "read_interval_s" not in data:
            return
        value = _positive(data.get("read_interval_s"))
        if value is None or self._intervals.get(device_id) == value:
            return
        self._intervals[device_id] = value
        record = self._registry.get(device_id)
        if record is not None and record.interval_s == value:
            return  # the device already reports at that interval
        if self._commands is None:
            self._write(
                self._paths.device(device_id),
                {model.INTERVAL_STATUS: {"ok": False, "error": "no command service"}},
            )
            return
        try:
            rec = await self._commands.submit(
                device_id, "config", {"interval_s": value}, origin=ORIGIN_INTERNAL
            )
            status: dict[str, Any] = {"ok": True, "value": value, "command_id": rec.id}
        except (ValueError, LookupError) as exc:
            status = {"ok": False, "value": value, "error": _error(exc)}
        status["at"] = model.now()
        self._write(self._paths.device(device_id), {model.INTERVAL_STATUS: status})

    # ------------------------------------------------------------ commands

    async def on_commands(self, snap: Snapshot) -> None:
        for ch in snap.changes:
            if ch.kind is ChangeKind.REMOVED or ch.data is None:
                await self._cancel(ch.doc_id)
            elif "state" not in ch.data:
                await self._submit(ch.doc_id, ch.data)

    async def _submit(self, command_id: str, data: Mapping[str, Any]) -> None:
        path = self._paths.command(command_id)
        device_id, action = data.get("device_id"), data.get("action")
        args = data.get("args") or {}
        ttl = data.get("ttl_s")
        problem = None
        if self._commands is None:
            problem = "this broker has no command service"
        elif not isinstance(device_id, str) or not isinstance(action, str):
            problem = 'a command needs "device_id" and "action" (strings)'
        elif not isinstance(args, Mapping):
            problem = 'args must be a map, e.g. {"seconds": 10}'
        elif ttl is not None and _positive(ttl) is None:
            problem = "ttl_s must be a positive number"
        if problem is None:
            assert self._commands is not None
            assert isinstance(device_id, str)
            assert isinstance(action, str)
            try:
                await self._commands.submit(
                    device_id,
                    action,
                    dict(args),
                    ttl_s=_positive(ttl),
                    origin=ORIGIN,
                    command_id=command_id,
                )
                self._seen(command_id)
                self.applied += 1
                return  # its `queued` event reaches the document through the sink
            except (ValueError, LookupError) as exc:
                problem = _error(exc)
        if command_id in self._commands_seen:
            return
        self._seen(command_id)
        self.refused += 1
        log.warning("firestore: command %s refused: %s", command_id, problem)
        self._write(path, {"state": "rejected", "error": problem, "updated_at": SERVER_TIME})

    async def _cancel(self, command_id: str) -> None:
        if self._commands is None or command_id not in self._commands_seen:
            return
        self._commands_seen.pop(command_id, None)
        try:
            await self._commands.cancel(command_id)
            log.info("firestore: command %s cancelled (its document was deleted)", command_id)
        except (ValueError, LookupError):
            pass  # already sent or final: deleting the document only cleans up

    # ------------------------------------------------------------ broker config

    async def on_broker(self, snap: Snapshot) -> None:
        for ch in snap.changes:
            if ch.data is None:
                continue
            raw = ch.data.get("config")
            if not isinstance(raw, Mapping):
                continue
            fp = _fingerprint(raw)
            if fp == self._config_seen:
                continue
            self._config_seen = fp
            self._apply_config(raw)

    def _apply_config(self, raw: Mapping[str, Any]) -> None:
        ignored: list[str] = []
        cfg = self.config
        for key, value in raw.items():
            if key in ("heartbeat_s", "stats_every_s"):
                number = _positive(value)
                if number is None or number < 1:
                    ignored.append(f"{key}: must be a number >= 1")
                else:
                    setattr(cfg, key, number)
            elif key == "read_every_s" and isinstance(value, Mapping):
                periods = {str(k): _positive(v) for k, v in value.items()}
                ignored += [
                    f"read_every_s.{k}: must be a number >= 5"
                    for k, v in periods.items()
                    if v is None or v < 5
                ]
                cfg.read_every_s = {k: v for k, v in periods.items() if v is not None and v >= 5}
            else:
                ignored.append(f"{key}: not a setting this broker knows")
        log.info(
            "firestore: broker config applied%s",
            f" (ignored: {'; '.join(ignored)})" if ignored else "",
        )
        self._write(
            self._paths.broker,
            {"config_applied": {"ok": not ignored, "ignored": ignored, "at": model.now()}},
        )
