"""`planty status` against a running gateway: the fleet table a person reads in a terminal."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from typer.testing import CliRunner

from planty_broker.app import Gateway
from planty_broker.cli.main import app
from tests.integration.stats.conftest import ADMIN, connect, eventually, register

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, list(args), env={"PLANTY_ADMIN_TOKEN": ADMIN, "COLUMNS": "250"}
    )
    return result.exit_code, result.output


async def test_status_shows_the_fleet(api: httpx.AsyncClient, gateway: Gateway) -> None:
    creds = await register(api, "cli")
    dev = await connect(creds)
    try:
        dev.publish("telemetry", json.dumps({"seq": 0, "readings": {"light": 812}}).encode())
        dev.publish("telemetry", b"garbage")

        async def counted() -> bool:
            d = (await api.get(f"/api/v1/devices/{dev.device_id}")).json()
            return (
                d["counts"]["errors"] == 1
                and d["latest"] is not None
                and d["stats"]["rssi"] == -58  # the status is handled apart from telemetry
            )

        await eventually(counted)
        # the CLI is synchronous: run it beside the gateway's event loop
        code, out = await asyncio.to_thread(run_cli, "status", "--url", gateway.api_url)
        assert code == 0, out
        line = next(x for x in out.splitlines() if dev.device_id in x)
        assert "online" in line and "light=812" in line and "-58" in line
        assert "devices:" in out and "online" in out.splitlines()[0]

        code, out = await asyncio.to_thread(
            run_cli, "status", "--url", gateway.api_url, "--json", "--window", "1d"
        )
        assert code == 0, out
        data = json.loads(out)
        assert data["fleet"]["window"] == "1d"
        assert any(d["id"] == dev.device_id for d in data["devices"])
    finally:
        await dev.close()


async def test_status_explains_a_bad_window(gateway: Gateway) -> None:
    code, out = await asyncio.to_thread(
        run_cli, "status", "--url", gateway.api_url, "--window", "forever"
    )
    assert code == 1
    assert "window 'forever' is not like 15m, 1h, 24h, 7d or 1w" in out
    assert "Traceback" not in out
