"""The composed services, handed to the front doors (HTTP API, Firestore connector, CLI).

Built by the composition root (`app.py`): the core services are there from the start;
the features started after them (`None` until started, or when switched off) are set
once, in start order. Nothing is looked up by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from planty_broker.config import Settings
from planty_broker.ports.device_authority import DeviceAuthority, DeviceEndpoint
from planty_broker.ports.link import Link
from planty_broker.ports.store import Store
from planty_broker.protocol import Topics
from planty_broker.services.access.audit import AuditLog
from planty_broker.services.access.pairing import PairingService
from planty_broker.services.access.tokens import TokenService
from planty_broker.services.bus import Bus
from planty_broker.services.commands.service import CommandService
from planty_broker.services.credentials.provisioning import ProvisioningService
from planty_broker.services.credentials.service import CredentialService
from planty_broker.services.dead_letters import DeadLetterService
from planty_broker.services.events import EventService
from planty_broker.services.firmware.service import FirmwareService
from planty_broker.services.health import HealthService
from planty_broker.services.history import HistoryService
from planty_broker.services.ingest import IngestService
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry
from planty_broker.services.rules.service import RulesService
from planty_broker.services.stats.service import StatsService

__all__ = ["DeviceEndpoint", "Services"]


@dataclass(slots=True)
class Services:
    settings: Settings
    store: Store
    bus: Bus
    registry: DeviceRegistry
    presence: PresenceService
    ingest: IngestService
    authority: DeviceAuthority
    topics: Topics
    broker_id: str = ""
    started_ms: int = 0
    stats: StatsService | None = None  # None with [stats] enabled = false
    events: EventService | None = None
    history: HistoryService | None = None
    dead_letters: DeadLetterService | None = None  # messages the store refused for good
    health: HealthService | None = None  # readiness (/readyz)
    commands: CommandService | None = None
    rules: RulesService | None = None  # None with [rules] enabled = false
    tokens: TokenService | None = None
    pairing: PairingService | None = None
    audit: AuditLog | None = None  # admin actions as `audit` events (who, from where)
    credentials: CredentialService | None = None
    provisioning: ProvisioningService | None = None
    link: Link | None = None  # the gateway's MQTT link, once connected
    firmware: FirmwareService | None = None
    # Scale-out (docs/scale-out.md): "single" (one gateway), "leader" (holds the lease: outbox,
    # presence, rules) or "worker" (stores telemetry, serves reads).
    role: str = "single"

    @property
    def endpoint(self) -> DeviceEndpoint:
        """Where devices connect (the device authority's endpoint)."""
        return self.authority.endpoint
