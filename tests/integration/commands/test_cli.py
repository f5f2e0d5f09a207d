"""`planty commands` and `planty events` against a running gateway: what a user types and sees."""

from __future__ import annotations

import json

import httpx
import pytest

from planty_broker.app import Gateway
from tests.integration.commands.conftest import register, sim_device
from tests.integration.core.test_cli import planty

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_send_wait_list_show_cancel_read(qapi: httpx.AsyncClient, qgw: Gateway) -> None:
    url = qgw.api_url
    async with sim_device(qapi, prefix="cli") as dev:
        r = await planty(
            "commands",
            "send",
            dev.device_id,
            "pump.on",
            "--arg",
            "seconds=3",
            "--wait",
            "10",
            "--url",
            url,
        )
        assert r.returncode == 0, r.stderr
        assert "pump.on on " + dev.device_id in r.stdout and "acked" in r.stdout
        assert '"seconds": 3' in r.stdout
        cid = r.stdout.split()[0]
        r = await planty("commands", "show", cid, "--url", url)
        assert [h["state"] for h in json.loads(r.stdout)["history"]] == ["queued", "sent", "acked"]
        r = await planty("commands", "list", dev.device_id, "--url", url)
        assert r.returncode == 0 and cid in r.stdout
        r = await planty("commands", "read", dev.device_id, "--url", url)
        assert r.returncode == 0, r.stderr
        assert set(json.loads(r.stdout)) == {"temperature", "soil_moisture", "light"}
        r = await planty("commands", "send", dev.device_id, "fan.on", "--url", url)
        assert r.returncode == 1 and "valid: ping, read, config, pump.on" in r.stderr
        r = await planty("commands", "send", dev.device_id, "read", "--arg", "nokey", "--url", url)
        assert r.returncode == 1 and "use key=value" in r.stderr
    offline = await register(qapi, "cli")
    r = await planty("commands", "send", offline.device_id, "read", "--url", url)
    cid = r.stdout.split()[0]
    assert "queued" in r.stdout
    r = await planty("commands", "cancel", cid, "--url", url)
    assert r.returncode == 0 and "cancelled" in r.stdout


async def test_events_tail_and_consumers(qapi: httpx.AsyncClient, qgw: Gateway) -> None:
    """Makes its own command event: under xdist this test may be the first on its gateway."""
    url = qgw.api_url
    offline = await register(qapi, "clitail")  # never connects: the command stays queued
    r = await planty("commands", "send", offline.device_id, "read", "--url", url)
    assert r.returncode == 0 and "queued" in r.stdout, (r.stdout, r.stderr)
    r = await planty("events", "tail", "--types", "command", "--after", "0", "--url", url)
    assert r.returncode == 0, r.stderr
    assert " command " in r.stdout
    r = await planty("events", "confirm", "cli-consumer", "1", "--url", url)
    assert r.returncode == 0 and "acked 1" in r.stdout
    r = await planty("events", "consumers", "--url", url)
    assert r.returncode == 0 and "cli-consumer" in r.stdout
    r = await planty("events", "confirm", "cli-consumer", "0", "--url", url)
    assert r.returncode == 1 and "only moves forward" in r.stderr


async def test_wait_ending_without_an_outcome_exits_4_and_says_so(
    qapi: httpx.AsyncClient, qgw: Gateway
) -> None:
    """Scripts tell the outcomes apart: 0 acked, 3 final but not acked, 4 --wait ran out."""
    offline = await register(qapi, "cliwait")  # never connects: the command stays queued
    r = await planty(
        "commands", "send", offline.device_id, "read", "--wait", "1", "--url", qgw.api_url
    )
    assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)
    assert "queued" in r.stdout and "no outcome within --wait 1 s" in r.stderr


async def test_messages_are_printed_literally(qapi: httpx.AsyncClient, qgw: Gateway) -> None:
    """Square brackets in a message are text, not console markup (`pip install 'x[postgres]'`)."""
    async with sim_device(qapi, prefix="clilit") as dev:
        r = await planty("commands", "send", dev.device_id, "valve[postgres].on", "--url",
                         qgw.api_url)
    assert r.returncode == 1
    assert "valve[postgres].on" in r.stderr, r.stderr
