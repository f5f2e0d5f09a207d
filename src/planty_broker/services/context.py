"""The composed services, handed to the front doors (HTTP API, Firestore connector, CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from planty_broker.config import Settings
from planty_broker.ports.store import Store
from planty_broker.services.bus import Bus
from planty_broker.services.ingest import IngestService
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry


@dataclass(frozen=True, slots=True)
class DeviceEndpoint:
    """What a device needs to reach the MQTT server: returned once at provisioning."""

    host: str
    port: int
    tls: bool
    ca_pem: str | None


@dataclass(slots=True)
class Services:
    settings: Settings
    store: Store
    bus: Bus
    registry: DeviceRegistry
    presence: PresenceService
    ingest: IngestService
    endpoint: DeviceEndpoint
    started_ms: int = 0
    # Features added by later issues register themselves here by name.
    extra: dict[str, Any] = field(default_factory=dict)
