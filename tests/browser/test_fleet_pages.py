"""The fleet table in a real browser, a page at a time: next and previous pages, search by
id or name, the presence filter (issue 17: a 10,000-device fleet is never sent whole)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from planty_broker.app import Gateway
from planty_broker.northbound.dashboard.views import PAGE_SIZE
from planty_broker.simulator.fleet import Fleet
from tests.browser.conftest import log_in, shot, wait_true
from tests.integration.core.conftest import ADMIN

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def row_ids(page: Any) -> list[str]:
    ids: list[str] = await page.eval_on_selector_all(
        "#fleet-rows tr[data-device]", "rows => rows.map(r => r.dataset.device)"
    )
    return ids


async def test_the_fleet_table_pages_and_searches(
    page: Any, dash_gateway: Gateway, fleet: Fleet
) -> None:
    base = dash_gateway.api_url
    prefix = f"pg{uuid.uuid4().hex[:4]}"
    mine = [f"{prefix}-{n:03d}" for n in range(PAGE_SIZE + 12)]
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    ) as api:
        # one bulk import (one Mosquitto reload), not a registration and a reload per device
        rows = [{"id": d, "name": "Balcony tomato" if d.endswith("-007") else None} for d in mine]
        r = await api.post("/api/v1/devices/import", json=rows)
        assert r.status_code == 200, r.text
        assert r.json()["imported"] == len(mine), r.text
        try:
            await log_in(page, base)
            await page.wait_for_selector("#fleet-rows tr[data-device]")
            total = int(await page.text_content("#fleet-total") or "0")
            assert total >= len(mine) + len(fleet.devices)
            first_page = await row_ids(page)
            assert len(first_page) == PAGE_SIZE  # never the whole fleet

            # search: only this test's devices, a page of them, then the rest on the next
            await page.fill("#fleet-search", prefix)
            await page.wait_for_selector(f"#fleet-total:text-is('{len(mine)}')")
            await wait_true(
                page,
                "p => [...document.querySelectorAll('#fleet-rows tr[data-device]')]"
                ".every(r => r.dataset.device.startsWith(p))",
                prefix,
            )
            one = await row_ids(page)
            assert one == mine[:PAGE_SIZE]
            assert await page.is_disabled("#fleet-prev")
            await shot(page, "fleet-search-page-1")
            await page.click("#fleet-next")
            await page.wait_for_selector(f"#row-{mine[-1]}")
            two = await row_ids(page)
            assert two == mine[PAGE_SIZE:]
            assert await page.is_disabled("#fleet-next")
            assert "51–62" in (await page.text_content("#fleet-range") or "")
            await page.click("#fleet-prev")
            await page.wait_for_selector(f"#row-{mine[0]}")
            assert await row_ids(page) == one

            # search by name, whatever the case
            await page.fill("#fleet-search", "balcony TOMATO")
            await page.wait_for_selector("#fleet-total:text-is('1')")
            assert await row_ids(page) == [f"{prefix}-007"]

            # the presence filter: this test's devices never connected, the fleet's are online
            await page.fill("#fleet-search", "")
            await page.select_option("#fleet-state", "online")
            for dev in fleet.devices:
                await page.wait_for_selector(f"#row-{dev.device_id}", timeout=15_000)
            online = await row_ids(page)
            assert not any(d.startswith(prefix) for d in online)
            await page.select_option("#fleet-state", "offline")
            await page.fill("#fleet-search", prefix)
            await page.wait_for_selector(f"#fleet-total:text-is('{len(mine)}')")
            await shot(page, "fleet-offline-search")

            # nothing matches: said so
            await page.fill("#fleet-search", "no-such-device-anywhere")
            await page.wait_for_selector("#fleet-rows:has-text('No device matches')")
        finally:
            # the other browser tests see the fleet as it was; all at once, so their Mosquitto
            # reloads coalesce (one after another, each waits for its own: a second apiece)
            await asyncio.gather(*(api.delete(f"/api/v1/devices/{d}") for d in mine))
