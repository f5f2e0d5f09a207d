"""In-memory `Store`: the fast fake for unit tests, behaving exactly like `SqlStore`.

Same ordering, bounds, cascade on removal, dropping of rows for unknown devices,
JSON round-trip of stored values (a tuple comes back as a list) and the same errors
when used before `open()` or after `close()`. Data outlives close/open of one
instance, like a file would.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import msgspec

from planty_broker.domain.events import NewEvent
from planty_broker.domain.models import DeviceRecord, PresenceTransition, Reading
from planty_broker.ports.store import (
    CommandStore,
    DeviceExistsError,
    EventStore,
    HistoryStore,
    RuleStore,
    Store,
    StoreRejectedError,
    StoreUnavailableError,
)
from planty_broker.storage.memory_firmware import MemoryFirmwareMixin
from planty_broker.storage.memory_history import MemoryHistoryMixin
from planty_broker.storage.memory_queue import MemoryQueueMixin
from planty_broker.storage.memory_rules import MemoryRulesMixin

log = logging.getLogger(__name__)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _json_copy(value: Any) -> Any:
    """What a JSON column gives back: a deep copy with JSON types only."""
    return msgspec.json.decode(msgspec.json.encode(value))


def _copy_device(d: DeviceRecord) -> DeviceRecord:
    return replace(
        d,
        sensors=tuple(_json_copy(list(d.sensors))),
        actuators=tuple(_json_copy(list(d.actuators))),
        attrs=_json_copy(d.attrs),
    )


def _in_range(t: int, since_ms: int | None, until_ms: int | None) -> bool:
    return (since_ms is None or t >= since_ms) and (until_ms is None or t <= until_ms)


class MemoryStore(MemoryQueueMixin, MemoryRulesMixin, MemoryFirmwareMixin, MemoryHistoryMixin):
    """The `Store` port in dictionaries; an async context manager (open/close).

    The command outbox and the event log come from `MemoryQueueMixin`, the threshold
    rules and their history from `MemoryRulesMixin`, firmware releases and rollouts from
    `MemoryFirmwareMixin`, the long-term history of readings from `MemoryHistoryMixin`.
    """

    def __init__(self) -> None:
        self._open = False
        self._devices: dict[str, DeviceRecord] = {}
        # Per device, kept sorted by (time, insertion number): ties keep arrival order.
        self._readings: dict[str, list[tuple[int, int, Reading]]] = {}
        # Per device, the (boot, seq) of its stored readings that have a boot (stored once).
        self._reading_keys: dict[str, set[tuple[int, int]]] = {}
        self._presence: dict[str, list[tuple[int, int, PresenceTransition]]] = {}
        self._meta: dict[str, Any] = {}
        self._next_id = 0

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _check(self) -> None:
        if not self._open:
            raise StoreUnavailableError("the memory store is not open: call open() first")

    # devices ------------------------------------------------------------------

    async def add_device(self, device: DeviceRecord) -> None:
        self._check()
        if device.id in self._devices:
            raise DeviceExistsError(f"device {device.id!r} is already registered")
        self._devices[device.id] = _copy_device(device)

    async def add_devices(self, devices: Sequence[DeviceRecord]) -> None:
        self._check()
        ids = [d.id for d in devices]
        if len(set(ids)) != len(ids) or any(i in self._devices for i in ids):
            raise DeviceExistsError("a device of the batch is already registered")
        for device in devices:
            self._devices[device.id] = _copy_device(device)

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        self._check()
        found = self._devices.get(device_id)
        return None if found is None else _copy_device(found)

    async def list_devices(self) -> list[DeviceRecord]:
        self._check()
        return [_copy_device(d) for _, d in sorted(self._devices.items())]

    async def update_device(self, device: DeviceRecord) -> None:
        """Replace the record; a device removed meanwhile stays removed (no-op)."""
        self._check()
        if device.id in self._devices:
            self._devices[device.id] = _copy_device(device)

    async def patch_device(self, device_id: str, changes: Mapping[str, Any]) -> None:
        """Write only the named fields; a device removed meanwhile stays removed (no-op)."""
        self._check()
        found = self._devices.get(device_id)
        if found is not None:
            self._devices[device_id] = _copy_device(replace(found, **changes))

    async def patch_devices(self, patches: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """All or nothing: every patched record is built before any is kept. What a database
        cannot store (a lone surrogate in a name) is refused, as SqlStore refuses it."""
        self._check()
        patched: dict[str, DeviceRecord] = {}
        for device_id, changes in patches:
            try:
                msgspec.json.encode(changes)
            except UnicodeError as exc:
                raise StoreRejectedError(f"refused the data: {device_id}: {exc}") from exc
            found = patched.get(device_id) or self._devices.get(device_id)
            if found is not None and changes:
                patched[device_id] = replace(found, **changes)
        for device_id, record in patched.items():
            self._devices[device_id] = _copy_device(record)

    async def remove_device(self, device_id: str) -> bool:
        self._check()
        self._readings.pop(device_id, None)
        self._reading_keys.pop(device_id, None)
        self._presence.pop(device_id, None)
        self._forget_device_commands(device_id)
        self._forget_device_history(device_id)
        return self._devices.pop(device_id, None) is not None

    # telemetry ----------------------------------------------------------------

    def _known(self, ids: set[str], kind: str) -> set[str]:
        unknown = ids - self._devices.keys()
        if unknown:
            log.warning(
                "dropped %s rows of unknown (removed) devices: %s",
                kind,
                ", ".join(sorted(unknown)[:10]),
            )
        return ids - unknown

    async def append_readings(self, readings: Sequence[Reading]) -> list[Reading]:
        """Readings of devices removed meanwhile are dropped, and so are readings already
        stored (same device, boot and seq); returns those stored now. A batch
        holding what a database cannot (an int past 64 bits, a lone surrogate) is refused
        whole, as SqlStore refuses it (StoreRejectedError)."""
        self._check()
        for r in readings:
            ints = (r.seq, r.ts_ms, r.received_ms, r.boot or 0)
            if not all(_INT64_MIN <= n <= _INT64_MAX for n in ints):
                raise StoreRejectedError(f"refused the data: {r.device_id} int past 64 bits")
            try:
                msgspec.json.encode(r.values)
            except UnicodeError as exc:
                raise StoreRejectedError(f"refused the data: {exc}") from exc
        known = self._known({r.device_id for r in readings}, "readings")
        new: list[Reading] = []
        for r in readings:
            if r.device_id in known:
                if r.boot is not None:
                    keys = self._reading_keys.setdefault(r.device_id, set())
                    if (r.boot, r.seq) in keys:
                        continue
                    keys.add((r.boot, r.seq))
                new.append(r)
                self._next_id += 1
                stored = replace(r, values=_json_copy(r.values))
                rows = self._readings.setdefault(r.device_id, [])
                bisect.insort(rows, (r.ts_ms, self._next_id, stored), key=lambda x: x[:2])
                data = {"seq": r.seq, "ts_ms": r.ts_ms, "readings": r.values}
                self._log_events([NewEvent(r.received_ms, "reading", r.device_id, data)])
        return new

    async def query_readings(
        self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[Reading]:
        """Readings with since_ms <= ts_ms <= until_ms (either bound optional), newest last."""
        self._check()
        if limit <= 0:
            return []
        rows = self._readings.get(device_id, [])
        found = [r for t, _, r in rows if _in_range(t, since_ms, until_ms)]
        return [replace(r, values=_json_copy(r.values)) for r in found[-limit:]]

    async def latest_readings(self) -> dict[str, Reading]:
        self._check()
        return {
            d: replace(rows[-1][2], values=_json_copy(rows[-1][2].values))
            for d, rows in self._readings.items()
            if rows
        }

    # presence -----------------------------------------------------------------

    async def append_presence(self, transitions: Sequence[PresenceTransition]) -> None:
        """Transitions of devices removed meanwhile are dropped, the others kept."""
        self._check()
        known = self._known({t.device_id for t in transitions}, "presence")
        for t in transitions:
            if t.device_id in known:
                self._next_id += 1
                rows = self._presence.setdefault(t.device_id, [])
                bisect.insort(rows, (t.at_ms, self._next_id, t), key=lambda x: x[:2])
                data = {"state": t.state.value, "cause": t.cause.value}
                self._log_events([NewEvent(t.at_ms, "presence", t.device_id, data)])

    async def last_presence(self) -> dict[str, PresenceTransition]:
        self._check()
        return {d: rows[-1][2] for d, rows in self._presence.items() if rows}

    async def presence_history(
        self, device_id: str, since_ms: int | None, until_ms: int | None
    ) -> list[PresenceTransition]:
        """Transitions with since_ms <= at_ms <= until_ms (either bound optional), oldest first."""
        self._check()
        rows = self._presence.get(device_id, [])
        return [t for at, _, t in rows if _in_range(at, since_ms, until_ms)]

    # meta ---------------------------------------------------------------------

    async def get_meta(self, key: str) -> Any | None:
        self._check()
        return _json_copy(self._meta.get(key))

    async def set_meta(self, key: str, value: Any) -> None:
        self._check()
        self._meta[key] = _json_copy(value)

    async def replace_meta(self, key: str, expected: Any | None, value: Any) -> bool:
        self._check()
        if self._meta.get(key) != expected:
            return False
        self._meta[key] = _json_copy(value)
        return True


if TYPE_CHECKING:
    _port_check: Store = MemoryStore()
    _commands_check: CommandStore = MemoryStore()
    _events_check: EventStore = MemoryStore()
    _rules_check: RuleStore = MemoryStore()
    _history_check: HistoryStore = MemoryStore()
