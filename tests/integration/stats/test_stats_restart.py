"""A gateway restart keeps the counters and vitals, and availability reads the stored history."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.integration.core.conftest import gateway_settings, running_gateway
from tests.integration.stats.conftest import ADMIN, connect, eventually, register, stats_of

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_restart_keeps_counters_and_history(tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path / "gw")
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=gw.api_url, headers=headers) as api,
    ):
        creds = await register(api, "rs")
        dev = await connect(creds)
        for seq in range(7):
            dev.publish("telemetry", json.dumps({"seq": seq, "readings": {"light": 3}}).encode())
        dev.publish("telemetry", b"[1, 2]")

        async def counted() -> dict | None:
            s = await stats_of(api, creds["id"])
            return s if s["readings"] == 7 and s["errors_total"] == 1 else None

        first = await eventually(counted)
        await asyncio.sleep(0.5)
        await dev.close()  # goodbye without a will: the device stays "online" in retained status
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=gw.api_url, headers=headers) as api,
    ):
        s = await stats_of(api, creds["id"])
        assert s["readings"] == 7
        assert s["errors"]["bad_field_type"] == 1 and s["errors_total"] == 1
        assert s["messages_in"] >= first["messages_in"]
        assert s["since_ms"] == first["since_ms"]  # counting since the first start
        assert s["vitals"]["boot"] == 3 and s["vitals"]["rssi"] == -58
        a = s["availability"]
        # the online time before the restart comes from the stored transitions
        assert a["online_ms"] >= 400
        states = [span["state"] for span in s["timeline"]]
        assert "online" in states
