"""The outbox survives a kill -9 of the gateway and a crash of Mosquitto: none lost, none
run twice (the simulated device's execution log is the proof)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import Faults
from tests.integration.commands.conftest import (
    online_in_api,
    profile,
    queue_settings,
    register,
)
from tests.integration.core.conftest import ADMIN, eventually, running_gateway
from tests.integration.core.proc import GatewayProcess

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def state_of(api: httpx.AsyncClient, cid: str) -> dict:
    r = await api.get(f"/api/v1/commands/{cid}")
    assert r.status_code == 200, r.text
    return r.json()


async def wait_state(api: httpx.AsyncClient, cid: str, state: str, timeout: float = 30) -> dict:
    async def check() -> dict | None:
        c = await state_of(api, cid)
        return c if c["state"] == state else None

    found: dict = await eventually(check, timeout=timeout, every=0.1)
    return found


async def test_kill_9_between_sent_and_ack_ends_acked_exactly_once(tmp_path: Path) -> None:
    gw = GatewayProcess(
        tmp_path / "data",
        "kill9-commands-admin-token-0123456789",
        PLANTY_COMMANDS_ACK_TIMEOUT_S="3",
        PLANTY_COMMANDS_PING_INTERVAL_S="0",
    )
    dev: SimDevice | None = None
    try:
        await gw.start()
        async with gw.client() as api:
            dev = SimDevice(await register(api), profile(Faults(ack_delay_s=3.0)))
            await dev.start()
            await dev.wait_online(15)
            await online_in_api(api, dev.device_id)
            r = await api.post(
                f"/api/v1/devices/{dev.device_id}/commands", json={"action": "pump.on"}
            )
            cid = r.json()["id"]
            await wait_state(api, cid, "sent")
        mosquitto = gw.mosquitto_pid()
        gw.kill9()  # the device runs it now and acks 3 s later, to a dead gateway
        await eventually(lambda: dev is not None and dev.stats.acks_acked >= 1, timeout=10)
        await gw.start()
        assert gw.mosquitto_pid() == mosquitto  # adopted: its queue for us is intact
        async with gw.client() as api:
            done = await wait_state(api, cid, "acked")
            assert done["result"] == {"on": True, "value": 1.0, "seconds": 300}
            assert [h["state"] for h in done["history"]].count("acked") == 1
        assert len(dev.executions(command_id=cid)) == 1
    finally:
        if dev is not None:
            await dev.stop()
        gw.cleanup()


async def test_the_outbox_survives_a_mosquitto_crash(tmp_path: Path) -> None:
    settings = queue_settings(
        tmp_path / "gw", commands={"ack_timeout_s": 2.0, "max_attempts": 8, "ping_interval_s": 0}
    )
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(
            base_url=gw.api_url, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as api,
    ):
        away = SimDevice(await register(api), profile())
        slow = SimDevice(await register(api), profile(Faults(ack_delay_s=1.0)))
        try:
            for d in (away, slow):
                await d.start()
                await d.wait_online(15)
                await online_in_api(api, d.device_id)
            await away.stop()
            await online_in_api(api, away.device_id, want=False)
            queued = (
                await api.post(
                    f"/api/v1/devices/{away.device_id}/commands", json={"action": "lamp.on"}
                )
            ).json()["id"]
            sent = (
                await api.post(
                    f"/api/v1/devices/{slow.device_id}/commands", json={"action": "pump.on"}
                )
            ).json()["id"]
            await wait_state(api, sent, "sent")
            pid = gw.supervisor.pid
            os.kill(pid, signal.SIGKILL)  # its ack (due in 1 s) has nowhere to go
            await eventually(lambda: gw.supervisor.pid not in (None, pid), timeout=20)
            await eventually(lambda: gw.link is not None and gw.link.connected, timeout=20)
            await away.start()
            assert (await wait_state(api, queued, "acked"))["attempts"] == 1
            assert (await wait_state(api, sent, "acked"))["attempts"] >= 1
            assert len(away.executions(command_id=queued)) == 1
            assert len(slow.executions(command_id=sent)) == 1
        finally:
            await asyncio.gather(away.stop(), slow.stop())
