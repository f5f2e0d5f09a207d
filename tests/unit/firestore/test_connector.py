"""The connector's lifecycle over the memory port: the design's names, one-line errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from planty_broker.config import FirestoreSettings, load_settings
from planty_broker.northbound.firestore.connector import FirestoreConnector
from planty_broker.northbound.firestore.memory_port import MemoryFirestore
from planty_broker.northbound.firestore.port import FirestoreConfigError
from planty_broker.ports.device_authority import DeviceEndpoint
from planty_broker.ports.memory_authority import MemoryDeviceAuthority
from planty_broker.protocol import Topics
from planty_broker.services.bus import Bus
from planty_broker.services.context import Services
from planty_broker.services.ingest import IngestService
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry
from planty_broker.storage.memory import MemoryStore
from tests.unit.firestore.conftest import eventually

SETTINGS = FirestoreSettings(enabled=True, broker_id="b1", heartbeat_s=0.05)


@pytest_asyncio.fixture
async def svc() -> AsyncIterator[Services]:
    async with MemoryStore() as store:
        bus = Bus()
        registry = DeviceRegistry(store, bus, lambda t: "h:" + t)
        await registry.add("pot-1")
        presence = PresenceService(store, bus, registry, keepalive_s=60, default_interval_s=60)
        ingest = IngestService(store, bus, registry, presence, Topics(), max_payload_bytes=65536)
        yield Services(
            load_settings(env={}), store, bus, registry, presence, ingest,
            MemoryDeviceAuthority(endpoint=DeviceEndpoint("localhost", 8883, True, None)),
            Topics(),
        )  # fmt: skip


class Denied(MemoryFirestore):
    async def get(self, path: str) -> dict[str, Any] | None:
        raise FirestoreConfigError("firestore: permission denied on project 'p': fix it")


async def test_start_creates_the_broker_document_and_stop_says_offline(svc: Services) -> None:
    fs = MemoryFirestore()
    conn = FirestoreConnector(svc, SETTINGS, fs)
    assert await conn.start()
    await eventually(lambda: fs.docs.get("brokers/b1", {}).get("online") is True)
    await eventually(lambda: "brokers/b1/devices/pot-1" in fs.docs)
    assert fs.docs["brokers/b1/devices/pot-1"]["device_id"] == "pot-1"
    beats = fs.writes_to("brokers/b1")
    await eventually(lambda: fs.writes_to("brokers/b1") > beats + 1)  # the heartbeat
    conn.add_data("brokers/b1/notes/n1", {"text": "hello"})
    await eventually(lambda: fs.docs.get("brokers/b1/notes/n1") == {"text": "hello"})
    await conn.stop()
    assert fs.docs["brokers/b1"]["online"] is False
    assert all(not lst.active for lst in fs.listeners)


async def test_permission_denied_is_one_line_and_the_connector_stays_off(
    svc: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    conn = FirestoreConnector(svc, SETTINGS, Denied())
    assert await conn.start()  # the port exists; Firestore answers "denied" on first use
    await eventually(lambda: conn.disabled_reason is not None)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "firestore: permission denied on project 'p': fix it; the gateway runs on without Firestore"
    ]
    await conn.stop()


async def test_a_store_that_cannot_register_the_consumer_disables_it(
    svc: Services, caplog: pytest.LogCaptureFixture
) -> None:
    await svc.store.close()  # the memory store refuses every call now
    conn = FirestoreConnector(svc, SETTINGS, MemoryFirestore())
    assert not await conn.start()
    assert conn.disabled_reason is not None and "cannot start" in conn.disabled_reason
    await svc.store.open()


async def test_an_outage_suspends_the_listeners_and_its_end_resumes_them(svc: Services) -> None:
    fs = MemoryFirestore()
    conn = FirestoreConnector(svc, SETTINGS, port=fs)
    assert await conn.start()
    try:
        await eventually(lambda: conn.reachable and all(conn.status()["listeners"].values()))
        fs.offline = True  # writes fail: the forward loop finds Firestore unreachable
        conn.add_data("brokers/b1", {"x": 1})
        await eventually(lambda: conn.reachable is False)
        assert not any(conn.status()["listeners"].values())
        assert all(lst.suspended for lst in conn._listeners)
        fs.offline = False
        await eventually(lambda: conn.reachable is True, timeout=15)
        await eventually(lambda: all(conn.status()["listeners"].values()))
        assert not any(lst.suspended for lst in conn._listeners)
    finally:
        await conn.stop()
