"""Pairing through Firestore documents, end to end, with firestore.rules enforced: the app
claims the code document, the broker pairs through the same service as the HTTP API."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.integration.core.conftest import ADMIN
from tests.integration.firestore.conftest import (
    PROJECT,
    Emulator,
    Gateways,
    doc,
    unique_broker,
    wait_doc,
)
from tests.integration.firestore.rest import UserClient

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def live_code(gw: Any) -> str:
    return str((await gw.services.pairing.current_code()).code)


async def test_app_claims_the_code_document_and_the_broker_pairs(
    gateways: Gateways, server_db: Any, emulator: Emulator
) -> None:
    if emulator.kind != "java":
        pytest.skip("the npm emulator has no REST API and no security rules")
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    code = await live_code(gw)  # what a person reads off `planty run`
    path = f"pairing_codes/{code}"
    published = await wait_doc(server_db, path, lambda d: d.get("broker_id") == broker_id)
    assert published["claimed_by"] is None

    app = UserClient(emulator.host, PROJECT, "acct-42")
    stranger = UserClient(emulator.host, PROJECT, "acct-666")
    assert (await app.get(f"brokers/{broker_id}"))[0] == 403  # not the owner yet
    status, seen = await app.get(path)
    assert status == 200 and seen is not None and seen["broker_id"] == broker_id
    assert await stranger.update(path, {"claimed_by": "acct-42"}) == 403  # not for someone else
    assert await app.update(path, {"claimed_by": "acct-42"}) == 200

    owned = await wait_doc(server_db, f"brokers/{broker_id}", lambda d: d.get("owner"))
    assert owned["owner"] == "acct-42" and owned["paired_at"] is not None
    for _ in range(50):  # the code document is withdrawn: single use
        if await doc(server_db, path) is None:
            break
        await asyncio.sleep(0.2)
    assert await doc(server_db, path) is None

    # The same pairing service as the HTTP API: it says paired, with that account.
    async with httpx.AsyncClient(
        base_url=gw.api_url, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as api:
        shown = (await api.get("/api/v1/pairing")).json()
    assert shown["paired"] is True and "acct-42" in str(shown)

    # firestore.rules: the owner reads its broker and edits its config; others cannot.
    status, mine = await app.get(f"brokers/{broker_id}")
    assert status == 200 and mine is not None and mine["owner"] == "acct-42"
    assert (await stranger.get(f"brokers/{broker_id}"))[0] == 403
    assert await app.update(f"brokers/{broker_id}", {"owner": "acct-666"}) == 403


async def test_unpairing_through_the_api_publishes_a_new_code_document(
    gateways: Gateways, server_db: Any
) -> None:
    broker_id = unique_broker()
    gw = await gateways.start(broker_id)
    code = await live_code(gw)
    await wait_doc(server_db, f"pairing_codes/{code}", lambda d: d.get("broker_id") == broker_id)
    server_db.document(f"pairing_codes/{code}").update({"claimed_by": "acct-7"})
    await wait_doc(server_db, f"brokers/{broker_id}", lambda d: d.get("owner") == "acct-7")
    async with httpx.AsyncClient(
        base_url=gw.api_url, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as api:
        r = await api.delete("/api/v1/pairing")
        assert r.status_code in (200, 204), r.text
    await wait_doc(server_db, f"brokers/{broker_id}", lambda d: d.get("owner") is None)
    fresh = await live_code(gw)
    assert fresh != code
    await wait_doc(server_db, f"pairing_codes/{fresh}", lambda d: d.get("broker_id") == broker_id)
