"""The dashboard's updates: a rollout view that follows the rollout, a device page section."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from planty_broker.app import Gateway
from planty_broker.simulator.fleet import Fleet
from tests.browser.conftest import log_in, shot
from tests.integration.core.conftest import ADMIN

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_a_rollout_shows_live_and_on_the_device_page(
    page: Any, dash_gateway: Gateway, fleet: Fleet
) -> None:
    base = dash_gateway.api_url
    ids = [d.device_id for d in fleet.devices]
    async with httpx.AsyncClient(
        base_url=base + "/api/v1", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    ) as api:
        files = [{"name": "main.py", "content_b64": base64.b64encode(b"V = 2\n" * 400).decode()}]
        r = await api.post("/firmware", json={"version": "web-2.0", "files": files})
        assert r.status_code == 201, r.text
        r = await api.post("/firmware/web-2.0/rollouts", json={"devices": ids, "first_wave": 1})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
    await log_in(page, base, path="/dashboard/rollouts")
    await page.wait_for_selector(f"#rollouts tr[data-rollout='{rid}']")
    await page.click(f"#rollouts tr[data-rollout='{rid}'] a")
    await page.wait_for_url(f"**/dashboard/rollouts/{rid}")
    await page.wait_for_selector("#app:not([hidden])")
    for d in ids:
        await page.wait_for_selector(
            f"#rollout tr[data-device='{d}'][data-state=applied]", timeout=30_000
        )
    assert "done" in await page.text_content("#rollout")
    await shot(page, "rollout-done")
    await page.click(f"#rollout tr[data-device='{ids[0]}'] a")
    await page.wait_for_selector(
        f"#updates tr[data-rollout='{rid}'][data-state=applied]", timeout=15_000
    )
    assert "Takes updates over the air" in await page.text_content("#updates")
    await shot(page, "device-updates")
