"""Device registry: who the devices are, their credentials (hashed), what they declared.

The store is the source of truth; the registry keeps every record in memory
for the hot path (an unknown-device check is a dict lookup) and publishes
`DevicesChanged` so the MQTT server's password file follows the store.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from planty_broker.domain.models import DeviceRecord
from planty_broker.errors import PlantyError
from planty_broker.ports.store import DeviceExistsError, Store
from planty_broker.protocol import Status, valid_device_id
from planty_broker.services.bus import Bus, DevicesChanged

log = logging.getLogger(__name__)

TokenHasher = Callable[[str], str]


class CredentialsHook(Protocol):
    """The device authority's `apply`: `wait=False` only asks for the change to go out."""

    def __call__(self, *, wait: bool = True) -> Awaitable[None]: ...


# Names the gateway itself uses on the MQTT server: never a device id.
RESERVED_IDS = frozenset({"planty-gateway", "planty-probe", "planty-claim", "planty-observer"})
# Claim slots (planty-claim-<n>) and any later internal account: never a device id.
RESERVED_PREFIX = "planty-"


class RegistryError(PlantyError):
    """Root of registry errors."""


class InvalidDeviceIdError(RegistryError, ValueError):
    pass


class UnknownDeviceError(RegistryError, KeyError):
    def __str__(self) -> str:
        return f"no device with id {self.args[0]!r}"


class DeviceAlreadyExistsError(RegistryError):
    pass


MAX_IMPORT = 10_000  # rows of one bulk import
_IMPORT_CHUNK = 1_000  # rows hashed and inserted at a time


@dataclass(frozen=True, slots=True)
class NewDevice:
    """One row of a bulk import."""

    id: str
    name: str | None = None
    sensors: tuple[str, ...] = ()
    actuators: tuple[str, ...] = ()
    attrs: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """Per row of a bulk import, in the order given: its token, or why it was refused."""

    row: int
    id: str
    token: str | None = None
    error: str | None = None  # "invalid_device_id" | "device_exists" | "duplicate_in_batch"
    message: str | None = None


def new_token() -> str:
    """A device token: 192 random bits, URL-safe."""
    return secrets.token_urlsafe(24)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class DeviceRegistry:
    """In-memory view of the registered devices, written through to the store."""

    def __init__(self, store: Store, bus: Bus, hash_token: TokenHasher) -> None:
        self._store = store
        self._bus = bus
        self._hash = hash_token
        self._devices: dict[str, DeviceRecord] = {}
        self._ids: list[str] = []  # every id, sorted: pages of the fleet list without a sort
        # Awaited after every credential change, before the caller gets the token: the MQTT
        # server's password file is current by then, so a new device can connect at once
        # (unless the caller said `wait=False`: then it is live at the next coalesced reload).
        self.credentials_hook: CredentialsHook | None = None

    async def load(self) -> None:
        self._devices = {d.id: d for d in await self._store.list_devices()}
        self._ids = sorted(self._devices)

    async def refresh(self) -> int:
        """Re-read the store (several gateway instances share it): devices another instance
        added or removed appear here too, with their bus events. Returns how many changed."""
        fresh = {d.id: d for d in await self._store.list_devices()}
        old = self._devices
        added = [d for d in fresh if d not in old]
        removed = [d for d in old if d not in fresh]
        self._devices = fresh
        self._ids = sorted(fresh)
        for device_id in added:
            self._bus.publish(DevicesChanged(device_id, "added"))
        for device_id in removed:
            self._bus.publish(DevicesChanged(device_id, "removed"))
        return len(added) + len(removed)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device_id: str) -> DeviceRecord | None:
        return self._devices.get(device_id)

    def require(self, device_id: str) -> DeviceRecord:
        device = self._devices.get(device_id)
        if device is None:
            raise UnknownDeviceError(device_id)
        return device

    def id_problem(self, device_id: str) -> tuple[str, str] | None:
        """(code, message) if `device_id` cannot be registered now, else None."""
        if (
            not valid_device_id(device_id)
            or device_id in RESERVED_IDS
            or device_id.startswith(RESERVED_PREFIX)
        ):
            return "invalid_device_id", (
                f"device id {device_id!r} is invalid: use 3-64 characters a-z, 0-9 and '-', "
                "starting with a letter or digit (ids starting with 'planty-' are reserved)"
            )
        if device_id in self._devices:
            return "device_exists", f"device {device_id!r} is already registered"
        return None

    async def add_many(self, rows: Sequence[NewDevice]) -> list[ImportOutcome]:
        """Register many devices at once (a bulk import): each valid row is added with a new
        token, each bad one is refused with its reason and loses nothing else. One store
        transaction per 1,000 rows, tokens hashed off the event loop, and one reload of the
        MQTT server for the whole batch (awaited: every token works when this returns)."""
        if len(rows) > MAX_IMPORT:
            raise ValueError(f"at most {MAX_IMPORT} devices per import")
        outcomes: list[ImportOutcome | None] = [None] * len(rows)
        accepted: list[int] = []
        in_batch: set[str] = set()
        for n, spec in enumerate(rows):
            problem = self.id_problem(spec.id)
            if problem is None and spec.id in in_batch:
                problem = "duplicate_in_batch", f"device id {spec.id!r} is listed twice"
            if problem is not None:
                outcomes[n] = ImportOutcome(n, spec.id, error=problem[0], message=problem[1])
                continue
            in_batch.add(spec.id)
            accepted.append(n)
        added: list[str] = []
        for at in range(0, len(accepted), _IMPORT_CHUNK):
            chunk = accepted[at : at + _IMPORT_CHUNK]
            tokens = [new_token() for _ in chunk]
            hashes = await asyncio.to_thread(self._hash_all, tokens)
            created = now_ms()
            records = [
                DeviceRecord(
                    id=rows[n].id,
                    created_at_ms=created,
                    token_hash=h,
                    name=rows[n].name,
                    sensors=rows[n].sensors,
                    actuators=rows[n].actuators,
                    attrs=dict(rows[n].attrs),
                )
                for n, h in zip(chunk, hashes, strict=True)
            ]
            try:
                await self._store.add_devices(records)
                stored = records
            except DeviceExistsError:  # another instance took one meanwhile: row by row
                stored = []
                for record in records:
                    try:
                        await self._store.add_device(record)
                        stored.append(record)
                    except DeviceExistsError:
                        pass
            kept = {r.id for r in stored}
            for n, token, record in zip(chunk, tokens, records, strict=True):
                if record.id in kept:
                    self._devices[record.id] = record
                    outcomes[n] = ImportOutcome(n, record.id, token=token)
                    added.append(record.id)
                else:
                    outcomes[n] = ImportOutcome(
                        n,
                        record.id,
                        error="device_exists",
                        message=f"device {record.id!r} is already registered",
                    )
        if added:
            self._ids = sorted(self._devices)
            await self._credentials_changed()
            log.info("%d devices imported", len(added))
            for device_id in added:
                self._bus.publish(DevicesChanged(device_id, "added"))
        return [o for o in outcomes if o is not None]

    def _hash_all(self, tokens: list[str]) -> list[str]:
        return [self._hash(t) for t in tokens]

    def all(self) -> list[DeviceRecord]:
        devices = self._devices
        return [devices[i] for i in self._ids]

    def ids(self) -> list[str]:
        """Every device id, sorted (the registry's own list: do not change it)."""
        return self._ids

    def credentials(self) -> dict[str, str]:
        """username -> password hash, for the MQTT server's password file.

        Devices without a token (certificate only, or revoked) have no password line.
        """
        return {d.id: d.token_hash for d in self._devices.values() if d.token_hash}

    async def add(
        self,
        device_id: str,
        name: str | None = None,
        *,
        token: str | None = None,
        attrs: dict[str, object] | None = None,
        sensors: tuple[str, ...] = (),
        actuators: tuple[str, ...] = (),
        wait: bool = True,
    ) -> tuple[DeviceRecord, str]:
        """Register a device; returns its record and its token (shown once, stored hashed).

        `token`: the token to use (a device-chosen one); "" registers it without a token
        (a certificate-only device). None (the default) makes a new one. `sensors` and
        `actuators`: what it has, declared ahead of its first contact (its own status
        replaces them). `wait=False`: return before the MQTT server accepts the token
        (it does at the next coalesced reload, within about a second).
        """
        if (
            not valid_device_id(device_id)
            or device_id in RESERVED_IDS
            or device_id.startswith(RESERVED_PREFIX)
        ):
            raise InvalidDeviceIdError(
                f"device id {device_id!r} is invalid: use 3-64 characters a-z, 0-9 and '-', "
                "starting with a letter or digit (ids starting with 'planty-' are reserved)"
            )
        if device_id in self._devices:
            raise DeviceAlreadyExistsError(f"device {device_id!r} is already registered")
        if token is None:
            token = new_token()
        record = DeviceRecord(
            id=device_id,
            created_at_ms=now_ms(),
            token_hash=self._hash(token) if token else "",
            name=name,
            sensors=sensors,
            actuators=actuators,
            attrs=dict(attrs or {}),
        )
        try:
            await self._store.add_device(record)
        except DeviceExistsError:
            raise DeviceAlreadyExistsError(f"device {device_id!r} is already registered") from None
        self._devices[device_id] = record
        bisect.insort(self._ids, device_id)
        await self._credentials_changed(wait=wait)
        log.info("device registered", extra={"device_id": device_id})
        self._bus.publish(DevicesChanged(device_id, "added"))
        return record, token

    async def update(self, device_id: str, **changes: object) -> DeviceRecord:
        """Change fields of a device's record (e.g. `token_hash` at a credential switch).

        Only the named fields are written (`Store.patch_device`), and they are applied to the
        record as it is when the write returns: a status noted meanwhile neither undoes this
        change nor is undone by it (a revoked token's hash once came back that way, issue 13).
        Callers that change `token_hash` apply it to the MQTT server themselves (one reload
        for several changes), so no hook runs here.
        """
        self.require(device_id)
        await self._store.patch_device(device_id, changes)
        device = dataclasses.replace(self.require(device_id), **changes)  # type: ignore[arg-type]
        self._devices[device_id] = device
        return device

    async def remove(self, device_id: str) -> None:
        self.require(device_id)
        await self._store.remove_device(device_id)
        del self._devices[device_id]
        at = bisect.bisect_left(self._ids, device_id)
        if at < len(self._ids) and self._ids[at] == device_id:
            del self._ids[at]
        await self._credentials_changed()
        log.info("device removed", extra={"device_id": device_id})
        self._bus.publish(DevicesChanged(device_id, "removed"))

    async def _credentials_changed(self, *, wait: bool = True) -> None:
        if self.credentials_hook is not None:
            await self.credentials_hook(wait=wait)

    async def note_status(self, device_id: str, status: Status) -> None:
        """Keep what the device declared (sensors, actuators, firmware, interval)."""
        changes = self.declared(device_id, status)
        if changes:
            await self._store.patch_device(device_id, changes)

    def declared(self, device_id: str, status: Status) -> dict[str, object]:
        """What the status changes in the device's record, applied here at once; the caller
        writes the returned fields to the store (the ingest path: `Store.patch_devices`, a
        batch of statuses per commit). Empty: nothing to write."""
        device = self._devices.get(device_id)
        if device is None or not status.online:
            return {}
        for what, before, now in (
            ("sensors", device.sensors, tuple(status.sensors)),
            ("actuators", device.actuators, tuple(status.actuators)),
        ):
            if before and now and now != before:
                log.warning(
                    "device %s declares %s %s, replacing %s (registered or declared before)",
                    device_id,
                    what,
                    ", ".join(now),
                    ", ".join(before),
                    extra={"device_id": device_id},
                )
        declared: dict[str, object] = {
            "sensors": tuple(status.sensors) or device.sensors,
            "actuators": tuple(status.actuators) or device.actuators,
            "fw": status.fw or device.fw,
            "interval_s": status.interval_s or device.interval_s,
        }
        changes = {k: v for k, v in declared.items() if getattr(device, k) != v}
        if changes:
            # Only what the device declares is written, never its token hash: a credential
            # change racing this status keeps its own field (issue 13).
            self._devices[device_id] = dataclasses.replace(device, **changes)  # type: ignore[arg-type]
        return changes
