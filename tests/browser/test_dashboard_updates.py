"""The dashboard's updates: a rollout view that follows the rollout, a device page section."""

from __future__ import annotations

import asyncio
import base64
import secrets
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
        # A version of its own per attempt: releases are immutable, so a rerun that posted
        # "web-2.0" again got a 409 and hid why the first attempt failed (CI, 2026-12-03).
        version = f"web-2.0-{secrets.token_hex(3)}"
        r = await api.post("/firmware", json={"version": version, "files": files})
        assert r.status_code == 201, r.text
        r = await api.post(f"/firmware/{version}/rollouts", json={"devices": ids, "first_wave": 1})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
    await log_in(page, base, path="/dashboard/rollouts")
    await page.wait_for_selector(f"#rollouts tr[data-rollout='{rid}']")
    await page.click(f"#rollouts tr[data-rollout='{rid}'] a")
    await page.wait_for_url(f"**/dashboard/rollouts/{rid}")
    await page.wait_for_selector("#app:not([hidden])")
    # Waves go one after another (download, reboot, back online on the new version): the
    # whole rollout gets 120 s under a loaded suite, not 30 s per device.
    deadline = asyncio.get_running_loop().time() + 120
    for d in ids:
        left_ms = max(1_000, (deadline - asyncio.get_running_loop().time()) * 1000)
        await page.wait_for_selector(
            f"#rollout tr[data-device='{d}'][data-state=applied]", timeout=left_ms
        )
    assert "done" in await page.text_content("#rollout")
    await shot(page, "rollout-done")
    await page.click(f"#rollout tr[data-device='{ids[0]}'] a")
    await page.wait_for_selector(
        f"#updates tr[data-rollout='{rid}'][data-state=applied]", timeout=15_000
    )
    assert "Takes updates over the air" in await page.text_content("#updates")
    await shot(page, "device-updates")
