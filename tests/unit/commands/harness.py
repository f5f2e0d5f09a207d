"""A command service over the memory store with a fake MQTT link: fast and exact."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec

from planty_broker.config import CommandSettings
from planty_broker.domain.models import Reading
from planty_broker.protocol import Command, Status, Topics, decode_command
from planty_broker.services.bus import AckReceived, Bus
from planty_broker.services.commands.service import CommandService
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry, now_ms
from planty_broker.storage.memory import MemoryStore

TOPICS = Topics()


class FakeLink:
    """Records what would be published; can be taken down and brought back."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Command]] = []
        self._up = asyncio.Event()
        self._up.set()
        self.new = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def down(self) -> None:
        self._up.clear()

    def up(self) -> None:
        self._up.set()

    async def wait_connected(self) -> None:
        await self._up.wait()

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        device_id = TOPICS.parse(topic).device_id
        self.sent.append((device_id, decode_command(payload)))
        self.new.set()

    def commands(self, device_id: str | None = None, action: str | None = None) -> list[Command]:
        return [
            c
            for d, c in self.sent
            if (device_id is None or d == device_id) and (action is None or c.action == action)
        ]

    async def wait_sent(self, n: int, timeout: float = 5.0, **match: str) -> list[Command]:
        async with asyncio.timeout(timeout):
            while len(self.commands(**match)) < n:
                self.new.clear()
                await self.new.wait()
        return self.commands(**match)


@dataclass
class Harness:
    store: MemoryStore
    bus: Bus
    registry: DeviceRegistry
    presence: PresenceService
    service: CommandService
    link: FakeLink
    readings: list[Reading] = field(default_factory=list)

    async def device(
        self, device_id: str, online: bool = True, actuators: tuple[str, ...] = ("pump", "lamp")
    ) -> None:
        await self.registry.add(device_id)
        await self.registry.note_status(device_id, Status(online=True, actuators=actuators))
        if online:
            self.online(device_id)

    def online(self, device_id: str) -> None:
        self.presence.on_status(device_id, True, 60, now_ms())

    def offline(self, device_id: str) -> None:
        self.presence.on_status(device_id, False, None, now_ms())

    async def ack(
        self,
        device_id: str,
        cid: str,
        ok: bool = True,
        result: dict | None = None,
        error: str | None = None,
    ) -> None:
        await self.service.handle_ack(AckReceived(device_id, cid, ok, result, error, now_ms()))


def settings(**kw: object) -> CommandSettings:
    base = {
        "ack_timeout_s": 0.2,
        "max_attempts": 3,
        "ping_interval_s": 0,
        "dispatch_rate_per_s": 10_000,
    }
    base.update(kw)
    return msgspec.convert(base, CommandSettings)


@contextlib.asynccontextmanager
async def harness(
    store: MemoryStore | None = None, lease_owner: str | None = None, **kw: object
) -> AsyncIterator[Harness]:
    if store is None:
        store = MemoryStore()
    await store.open()
    bus = Bus()
    registry = DeviceRegistry(store, bus, lambda t: "hash-" + t[:4])
    await registry.load()
    presence = PresenceService(
        store, bus, registry, keepalive_s=60, default_interval_s=60, check_every_s=3600
    )
    await presence.start()
    readings: list[Reading] = []

    async def keep(r: Reading) -> None:
        readings.append(r)

    service = CommandService(
        store,
        bus,
        registry,
        presence,
        TOPICS,
        settings(**kw),
        readings=keep,
        lease_owner=lease_owner,
    )
    link = FakeLink()
    service.attach(link)
    await service.start()
    h = Harness(store, bus, registry, presence, service, link, readings)
    try:
        yield h
    finally:
        await service.stop()
        await presence.stop()
