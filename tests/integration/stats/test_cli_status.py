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
        assert "device" in out.splitlines()[0] and "online" in out.splitlines()[0]

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


async def test_tables_fit_80_columns_and_never_break_a_word(
    api: httpx.AsyncClient, gateway: Gateway
) -> None:
    """Piped or in an 80-column terminal: columns are dropped or cut by width, a word never
    splits (`prese/nce`, `sim-000/1`), and `--json` has everything."""
    devs = []
    for _ in range(3):
        creds = await register(api, "narrow")
        devs.append(await connect(creds))
    never = (await api.post("/api/v1/devices", json={"id": "narrow-never-seen"})).json()
    try:
        for dev in devs:
            dev.publish(
                "telemetry",
                json.dumps(
                    {"seq": 0, "readings": {"temperature": 21.5, "soil_moisture": 0.43,
                                            "light": 812, "humidity": 0.61}}
                ).encode(),
            )
        for dev in devs:
            await eventually(lambda d=dev: _has_latest(api, d.device_id))
        for args in (("status",), ("devices", "list")):
            code, out = await asyncio.to_thread(
                run_cli_at, 80, *args, "--url", gateway.api_url
            )
            assert code == 0, out
            lines = out.splitlines()
            assert max(len(x) for x in lines) <= 80, out
            header = next(x for x in lines if x.lstrip().startswith(("device", "id ")))
            assert "presence" in header.split(), header
            for dev in [*devs]:
                row = next(x for x in lines if x.startswith(dev.device_id + " "))
                assert "online" in row.split(), row
            assert any(x.startswith(never["id"] + " ") and "never seen" in x for x in lines)
        code, out = await asyncio.to_thread(
            run_cli_at, 80, "devices", "list", "--json", "--url", gateway.api_url
        )
        assert code == 0
        listed = {d["id"]: d for d in json.loads(out)["devices"]}
        assert listed[devs[0].device_id]["latest"]["readings"]["humidity"] == 0.61
    finally:
        for dev in devs:
            await dev.close()


def run_cli_at(columns: int, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, list(args), env={"PLANTY_ADMIN_TOKEN": ADMIN, "COLUMNS": str(columns)}
    )
    return result.exit_code, result.output


async def _has_latest(api: httpx.AsyncClient, device_id: str) -> bool:
    d = (await api.get(f"/api/v1/devices/{device_id}")).json()
    return d["latest"] is not None
