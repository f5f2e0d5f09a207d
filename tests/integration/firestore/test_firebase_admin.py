"""firebase-admin users: the usual server SDK, with AnonymousCredentials, against the emulator,
both as the Planty server driving a broker and as the client a connector runs on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import firebase_admin
import pytest
from firebase_admin import credentials, firestore
from google.auth.credentials import AnonymousCredentials

from planty_broker.app import Gateway
from planty_broker.config import FirestoreSettings
from planty_broker.northbound.firestore.connector import FirestoreConnector
from planty_broker.northbound.firestore.google_port import GoogleFirestore
from tests.integration.core.conftest import gateway_settings
from tests.integration.firestore.conftest import (
    PROJECT,
    Emulator,
    Gateways,
    sim_device,
    unique_broker,
    wait_doc,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


class Anonymous(credentials.Base):
    """firebase-admin credential for the emulator: no Google account involved."""

    def get_credential(self) -> AnonymousCredentials:
        return AnonymousCredentials()  # type: ignore[no-untyped-call]


@pytest.fixture
def admin_db(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulator.host)
    app = firebase_admin.initialize_app(
        Anonymous(), {"projectId": PROJECT}, name=f"planty-{uuid.uuid4().hex[:6]}"
    )
    try:
        yield firestore.client(app)
    finally:
        firebase_admin.delete_app(app)


async def test_server_with_firebase_admin_drives_the_broker(
    gateways: Gateways, admin_db: Any
) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    await sim_device(gw, "fa-dev", interval_s=5)
    broker = await wait_doc(admin_db, f"brokers/{broker_id}", lambda d: d.get("online"))
    assert broker["broker_id"] == broker_id
    cmd = admin_db.collection(f"brokers/{broker_id}/commands").document()  # an auto id
    cmd.set({"device_id": "fa-dev", "action": "ping", "ttl_s": 60})
    acked = await wait_doc(admin_db, cmd.path, lambda d: d.get("state") == "acked")
    assert acked["attempts"] == 1


async def test_connector_runs_on_a_firebase_admin_client(
    admin_db: Any, tmp_path: Path, emulator: Emulator
) -> None:
    broker_id = unique_broker()
    async with Gateway(gateway_settings(tmp_path / "gw"), announce=lambda _l: None) as gw:
        assert gw.services is not None
        settings = FirestoreSettings(enabled=True, broker_id=broker_id, heartbeat_s=1.0)
        conn = FirestoreConnector(gw.services, settings, GoogleFirestore(admin_db, 5.0))
        assert await conn.start()
        try:
            first = await wait_doc(admin_db, f"brokers/{broker_id}", lambda d: d.get("online"))
            beat = first["heartbeat_at"]
            await wait_doc(admin_db, f"brokers/{broker_id}", lambda d: d["heartbeat_at"] > beat)
        finally:
            await conn.stop()
        await asyncio.sleep(0)
        gone = await wait_doc(admin_db, f"brokers/{broker_id}", lambda d: True)
        assert gone["online"] is False
