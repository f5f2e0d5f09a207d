"""The rules service over the memory store, the real command outbox and a fake MQTT link."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from planty_broker.config import RuleSettings
from planty_broker.domain.models import Reading
from planty_broker.domain.rules.records import RuleEvent
from planty_broker.protocol import Status
from planty_broker.services.bus import DeviceStatusReceived, ReadingStored
from planty_broker.services.registry import now_ms
from planty_broker.services.rules.service import RulesService
from planty_broker.storage.memory import MemoryStore
from tests.unit.commands.harness import Harness, harness

DAY_MS = 86_400_000


class Clock:
    """The rules' clock, moved by hand (the outbox keeps real time).

    It starts near real time (manual holds compare the outbox's real created_ms with it),
    but never in the last two hours of a UTC day: the daily fire budget resets at midnight,
    so a test that advances the clock across it would see a fresh budget (CI once ran at
    23:50 and a restart test counted 3 fires where the budget allows 2).
    """

    def __init__(self) -> None:
        ms = now_ms()
        if ms % DAY_MS > DAY_MS - 2 * 3_600_000:
            ms -= 2 * 3_600_000
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


def rule_settings(**kw: Any) -> RuleSettings:
    base: dict[str, Any] = {"timezone": "UTC", "silence_check_s": 3600}
    base.update(kw)
    return msgspec.convert(base, RuleSettings)


@dataclass
class RulesHarness:
    h: Harness
    rules: RulesService
    clock: Clock

    @property
    def store(self) -> MemoryStore:
        return self.h.store

    async def device(
        self,
        device_id: str,
        sensors: tuple[str, ...] = ("soil_moisture", "temperature", "light"),
        actuators: tuple[str, ...] = ("pump", "lamp"),
    ) -> None:
        """A registered, online device that declared its sensors and actuators."""
        await self.h.registry.add(device_id)
        await self.h.registry.note_status(
            device_id, Status(online=True, sensors=sensors, actuators=actuators)
        )
        self.h.online(device_id)
        self.h.bus.publish(DeviceStatusReceived(device_id, True, self.clock(), None))

    def reading(self, device_id: str, ts_ms: int | None = None, **values: float) -> None:
        """What ingest publishes after a reading was committed."""
        at = self.clock()
        self.h.bus.publish(ReadingStored(Reading(device_id, 0, ts_ms or at, at, values)))

    async def settle(self) -> None:
        """Let fire tasks reach the outbox and history lines reach the store."""
        for _ in range(3):
            if self.rules.engine._tasks:
                await asyncio.wait(set(self.rules.engine._tasks), timeout=5)
            await asyncio.sleep(0.03)  # the history writer batches for 20 ms

    async def history(self, rule_id: str, **kw: Any) -> list[RuleEvent]:
        await self.settle()
        return list(reversed(await self.rules.history(rule_id, **kw)))

    async def rule_commands(self, device_id: str) -> list[Any]:
        await self.settle()
        found = await self.h.service.find(device_id, None, 1000)
        return sorted((c for c in found if c.origin == "rule"), key=lambda c: c.created_ms)


@contextlib.asynccontextmanager
async def rules_harness(
    store: MemoryStore | None = None,
    clock: Clock | None = None,
    commands: dict[str, Any] | None = None,
    **kw: Any,
) -> AsyncIterator[RulesHarness]:
    """`commands`: outbox settings; `kw`: `[rules]` settings."""
    clock = clock or Clock()
    async with harness(store, **(commands or {})) as h:
        service = RulesService(
            h.store,
            h.bus,
            h.registry,
            rule_settings(**kw),
            commands=h.service,
            clock=clock,
            max_on_seconds=h.service.settings.max_on_seconds,
        )
        await service.start(restore_holds_from=h.store)
        try:
            yield RulesHarness(h, service, clock)
        finally:
            await service.stop()


SOIL_RULE: dict[str, Any] = {
    "id": "water",
    "devices": "dev-1",
    "reading": "soil_moisture",
    "op": "<",
    "threshold": 0.3,
    "rearm": 0.4,
    "action": "pump.on",
    "args": {"seconds": 20},
    "cooldown_s": 600,
    "max_fires_per_day": 3,
}
