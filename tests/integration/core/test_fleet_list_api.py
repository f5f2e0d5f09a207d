"""GET /api/v1/devices a page at a time over HTTP: cursors, search, bounds, and the CLI
following the pages (issue 17)."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from planty_broker.app import Gateway
from tests.integration.core.conftest import ADMIN
from tests.integration.core.test_cli import planty

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_the_fleet_list_pages_with_a_cursor_and_searches(gateway: Gateway) -> None:
    prefix = f"pl{uuid.uuid4().hex[:5]}"
    mine = [f"{prefix}-{n:02d}" for n in range(12)]
    async with httpx.AsyncClient(
        base_url=gateway.api_url + "/api/v1",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    ) as api:
        added = await asyncio.gather(
            *(api.post("/devices", json={"id": d, "name": f"Shelf {d[-2:]}"}) for d in mine)
        )
        assert all(r.status_code == 201 for r in added)

        seen: list[str] = []
        params: dict[str, str | int] = {"q": prefix, "limit": 5}
        cursors = []
        while True:
            r = await api.get("/devices", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["count"] == 12 and body["online"] == 0 and body["limit"] == 5
            seen += [d["id"] for d in body["devices"]]
            if body["next_cursor"] is None:
                break
            cursors.append(body["next_cursor"])
            params["cursor"] = body["next_cursor"]
        assert seen == mine and len(cursors) == 2
        last = await api.get("/devices", params={"q": prefix, "limit": 5, "cursor": cursors[-1]})
        back = await api.get(
            "/devices", params={"q": prefix, "limit": 5, "cursor": last.json()["prev_cursor"]}
        )
        assert [d["id"] for d in back.json()["devices"]] == mine[5:10]

        # by name, any case; with the presence filter (none of these ever connected)
        r = await api.get("/devices", params={"q": "SHELF 07", "state": "offline"})
        assert [d["id"] for d in r.json()["devices"]] == [f"{prefix}-07"]
        r = await api.get("/devices", params={"q": prefix, "state": "online"})
        assert r.json()["count"] == 0

        # without parameters: a fleet this small comes whole, as before
        whole = (await api.get("/devices")).json()
        assert set(mine) <= {d["id"] for d in whole["devices"]}
        assert whole["next_cursor"] is None and whole["count"] == len(whole["devices"])

        # bounds: a clear 422 naming the field
        for bad, field in (
            ({"cursor": "not-ours"}, "cursor"),
            ({"limit": 1001}, "limit"),
            ({"limit": 0}, "limit"),
            ({"state": "sleeping"}, "state"),
            ({"q": "x" * 201}, "q"),
        ):
            r = await api.get("/devices", params=bad)
            assert r.status_code == 422, (bad, r.text)
            assert field in r.json()["error"]["message"], (bad, r.text)

    # the CLI follows the pages and searches
    r = await planty(
        "devices", "list", "--url", gateway.api_url, "--search", prefix, "--limit", "7", "--json"
    )
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [d["id"] for d in listed["devices"]] == mine[:7] and listed["count"] == 12
