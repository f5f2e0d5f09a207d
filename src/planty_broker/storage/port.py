"""The storage port: what the services need from a database, nothing more.

Adapters: `storage.sqlite` (embedded default, one file in the data folder),
`storage.memory` (fast fake for unit tests). Every write method returns only
once the data is durable (committed), so callers may acknowledge upstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from planty_broker.domain.models import DeviceRecord, PresenceTransition, Reading


class StoreError(Exception):
    """Root of storage errors; the message says what happened and what to do."""


class DeviceExistsError(StoreError):
    """A device with that id is already registered."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or written (disk full, locked, server down)."""


class Store(Protocol):
    """Durable state of the gateway."""

    async def open(self) -> None:
        """Connect and migrate the schema to the latest version."""

    async def close(self) -> None: ...

    # devices
    async def add_device(self, device: DeviceRecord) -> None:
        """Insert; raises DeviceExistsError if the id is taken."""

    async def get_device(self, device_id: str) -> DeviceRecord | None: ...

    async def list_devices(self) -> list[DeviceRecord]: ...

    async def update_device(self, device: DeviceRecord) -> None:
        """Replace the stored record of an existing device."""

    async def remove_device(self, device_id: str) -> bool:
        """Delete the device and its data; False if it did not exist."""

    # telemetry
    async def append_readings(self, readings: Sequence[Reading]) -> None:
        """Store a batch in one transaction; durable on return."""

    async def query_readings(
        self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[Reading]:
        """Readings of one device by `ts_ms`, newest last, at most `limit` (the newest ones)."""

    async def latest_readings(self) -> dict[str, Reading]:
        """The newest reading of every device (to rebuild state after a restart)."""

    # presence
    async def append_presence(self, transitions: Sequence[PresenceTransition]) -> None: ...

    async def last_presence(self) -> dict[str, PresenceTransition]:
        """The newest transition of every device."""

    async def presence_history(
        self, device_id: str, since_ms: int | None, until_ms: int | None
    ) -> list[PresenceTransition]: ...

    # small key/value state of the gateway (counters snapshot, broker id, ...)
    async def get_meta(self, key: str) -> Any | None: ...

    async def set_meta(self, key: str, value: Any) -> None: ...
