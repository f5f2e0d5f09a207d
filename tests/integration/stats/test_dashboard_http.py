"""Dashboard over plain HTTP: open data-free shells, token-guarded fragments, strict headers."""

from __future__ import annotations

import httpx
import pytest

from planty_broker.app import Gateway
from tests.integration.stats.conftest import connect, eventually, register

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_pages_are_open_but_hold_no_data(api: httpx.AsyncClient, gateway: Gateway) -> None:
    creds = await register(api, "web")
    async with httpx.AsyncClient(base_url=gateway.api_url) as anonymous:
        r = await anonymous.get("/dashboard", follow_redirects=True)
        assert r.status_code == 200 and "Sign in" in r.text
        assert creds["id"] not in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        for path in (
            "/dashboard/fragments/fleet",
            f"/dashboard/fragments/row/{creds['id']}",
            f"/dashboard/fragments/device/{creds['id']}",
            f"/dashboard/fragments/commands/{creds['id']}",
        ):
            assert (await anonymous.get(path)).status_code == 401, path
        js = await anonymous.get("/dashboard/static/vendor/uPlot.iife.min.js")
        assert js.status_code == 200 and "uPlot" in js.text
        bad = await anonymous.get("/dashboard/devices/..%2F..%2Fetc")
        assert bad.status_code == 404


async def test_root_takes_a_browser_to_the_dashboard_and_there_is_a_favicon(
    gateway: Gateway,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.api_url) as anonymous:
        browser = await anonymous.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert browser.status_code == 307 and browser.headers["location"] == "/dashboard/"
        script = await anonymous.get("/", headers={"Accept": "application/json"})
        assert script.status_code == 200
        assert script.json()["dashboard"] == "/dashboard/" and script.json()["api"] == "/api/v1"
        icon = await anonymous.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg")
        page = (await anonymous.get("/dashboard/")).text
        assert 'rel="icon"' in page


async def test_fragments_render_the_fleet_and_a_device(api: httpx.AsyncClient) -> None:
    creds = await register(api, "web")
    dev = await connect(creds)
    try:

        async def online_row() -> str | None:
            r = await api.get(f"/dashboard/fragments/row/{creds['id']}")
            return r.text if 'data-state="online"' in r.text else None

        row = await eventually(online_row)
        assert f'id="row-{creds["id"]}"' in row
        fleet = (await api.get("/dashboard/fragments/fleet")).text
        assert creds["id"] in fleet and "devices" in fleet
        panel = await api.get(f"/dashboard/fragments/device/{creds['id']}", params={"window": "1d"})
        assert panel.status_code == 200
        assert "Presence over 1d" in panel.text and "-58 dBm" in panel.text
        assert 'data-actuators="pump"' in panel.text
        missing = await api.get("/dashboard/fragments/device/nobody-here")
        assert missing.status_code == 404
        history = await api.get(f"/dashboard/fragments/commands/{creds['id']}")
        assert "No command sent to this device yet" in history.text
    finally:
        await dev.close()


async def test_names_are_escaped(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/v1/devices", json={"id": "web-xss-1", "name": "<script>x()</script>"})
    assert r.status_code == 201
    fleet = (await api.get("/dashboard/fragments/fleet")).text
    assert "<script>x()" not in fleet and "&lt;script&gt;x()" in fleet
