"""Device statuses are stored a batch per commit (issue 17), on a real SQLite file.

A bulk-imported fleet logging in at once sent one status each, and each was one commit on
the store's single thread, queued ahead of the readings. Here the real ingest path
(IngestService, registry, presence, dead letters over SqlStore) takes a fleet's statuses in
one event-loop pass and must: store what each declares in one transaction, acknowledge
(PUBACK) and announce (`DeviceStatusReceived`) none before that commit, never write a token
hash (a revocation racing the statuses keeps its empty hash, issue 13), hold everything
while the store is unavailable, and set aside only the status the store refuses for good
(issue 11), acknowledging the rest.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from planty_broker.ports.store import StoreRejectedError, StoreUnavailableError
from planty_broker.protocol import Channel, Topics
from planty_broker.services.bus import Bus, DeviceStatusReceived
from planty_broker.services.dead_letters import DeadLetterService
from planty_broker.services.ingest import IngestService
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry, NewDevice
from planty_broker.storage.sql import SqlStore
from planty_broker.storage.sql_dead_letters import SqlDeadLetterStore

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

FLEET = 300
REFUSED = "dev-0007"  # the store refuses this device's patch for good


class Store(SqlStore):
    """SQLite; counts status transactions, can hold them at a gate or fail them."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.patch_calls: list[int] = []
        self.gate: asyncio.Event | None = None
        self.unavailable = 0  # the next n calls fail transiently

    async def patch_devices(self, patches: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.unavailable:
            self.unavailable -= 1
            raise StoreUnavailableError("database is locked (test)")
        if any(device_id == REFUSED for device_id, _ in patches):
            raise StoreRejectedError("refused the data (test)")
        self.patch_calls.append(len(patches))
        await super().patch_devices(patches)


class Rig:
    def __init__(self, path: Path) -> None:
        self.store = Store(f"sqlite:///{path}")
        self.bus = Bus()
        self.topics = Topics()
        self.registry = DeviceRegistry(self.store, self.bus, lambda t: "hash-" + t)
        self.presence = PresenceService(
            self.store, self.bus, self.registry, keepalive_s=60, default_interval_s=60,
            check_every_s=3600,
        )  # fmt: skip
        self.dead = DeadLetterService(SqlDeadLetterStore(self.store), self.bus, keep_days=1)
        self.ingest = IngestService(
            self.store,
            self.bus,
            self.registry,
            self.presence,
            self.topics,
            max_payload_bytes=65536,
            dead_letters=self.dead,
        )
        self.events: list[DeviceStatusReceived] = []
        self.bus.subscribe(DeviceStatusReceived, self.events.append)
        self.acked: list[str] = []

    async def start(self) -> Rig:
        await self.store.open()
        await self.registry.load()
        await self.registry.add_many([NewDevice(f"dev-{i:04d}") for i in range(FLEET)])
        await self.presence.start()
        await self.dead.start()
        await self.ingest.start()
        return self

    async def stop(self) -> None:
        await self.ingest.stop()
        await self.presence.stop()
        await self.store.close()

    def status(self, device_id: str, fw: str = "1.0") -> None:
        body = {
            "online": True,
            "fw": fw,
            "sensors": ["soil", "light"],
            "actuators": ["pump"],
            "interval_s": 30,
        }
        topic = self.topics.device(device_id, Channel.STATUS)
        self.ingest.handle(
            topic, json.dumps(body).encode(), True, lambda: self.acked.append(device_id)
        )

    async def all_acked(self, n: int) -> None:
        for _ in range(1000):
            if len(self.acked) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{len(self.acked)} of {n} statuses acknowledged")


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = await Rig(tmp_path / "planty.sqlite3").start()
    try:
        yield r
    finally:
        await r.stop()


async def test_a_fleet_logging_in_is_a_few_commits_and_acked_after_them(rig: Rig) -> None:
    ids = [f"dev-{i:04d}" for i in range(FLEET) if f"dev-{i:04d}" != REFUSED]
    hashes = {d: rig.registry.require(d).token_hash for d in ids}
    # A revocation (the token hash emptied) lands while the statuses wait for their commit.
    await rig.registry.update("dev-0001", token_hash="")
    rig.store.gate = asyncio.Event()
    for d in ids:
        rig.status(d)
    await asyncio.sleep(0.2)
    assert rig.acked == [] and rig.events == [], "acknowledged before the commit"
    rig.store.gate.set()
    await rig.all_acked(len(ids))
    assert sorted(rig.acked) == ids
    assert sum(rig.store.patch_calls) == len(ids)
    assert len(rig.store.patch_calls) <= 2, rig.store.patch_calls  # batches of <= 500
    assert sorted(e.device_id for e in rig.events) == ids
    for d in ids:
        stored = await rig.store.get_device(d)
        assert stored is not None
        assert (stored.sensors, stored.actuators, stored.fw, stored.interval_s) == (
            ("soil", "light"),
            ("pump",),
            "1.0",
            30.0,
        )
        assert stored.token_hash == ("" if d == "dev-0001" else hashes[d])
    # The same statuses again change nothing: acknowledged without a transaction.
    calls = len(rig.store.patch_calls)
    rig.acked.clear()
    for d in ids[:50]:
        rig.status(d)
    await rig.all_acked(50)
    assert len(rig.store.patch_calls) == calls


async def test_statuses_are_held_while_the_store_is_unavailable(rig: Rig) -> None:
    rig.store.unavailable = 2
    for i in range(20):
        rig.status(f"dev-{i + 100:04d}", fw="2.0")
    await rig.all_acked(20)
    assert rig.store.unavailable == 0 and sum(rig.store.patch_calls) == 20
    assert rig.ingest.statuses.dead_lettered == 0
    for i in range(20):
        stored = await rig.store.get_device(f"dev-{i + 100:04d}")
        assert stored is not None and stored.fw == "2.0"


async def test_a_status_the_store_refuses_is_set_aside_and_the_rest_stored(rig: Rig) -> None:
    batch = [f"dev-{i:04d}" for i in range(16)]  # REFUSED among them
    for d in batch:
        rig.status(d, fw="3.0")
    await rig.all_acked(len(batch))  # the refused one too: it must not be delivered again
    assert rig.ingest.statuses.dead_lettered == 1
    letters = await rig.dead.port.list_dead_letters(REFUSED, None, 10)
    assert [x.topic for x in letters] == [rig.topics.device(REFUSED, Channel.STATUS)]
    assert sorted(e.device_id for e in rig.events) == sorted(set(batch) - {REFUSED})
    for d in batch:
        stored = await rig.store.get_device(d)
        assert stored is not None and stored.fw == (None if d == REFUSED else "3.0")
