"""A fleet built from known credentials (as tests and benchmarks do) on a real Mosquitto."""

from __future__ import annotations

import asyncio

import pytest

from planty_broker.protocol import Channel, Command, Topics, decode_status
from planty_broker.simulator.fleet import Fleet
from planty_broker.simulator.profile import DeviceProfile
from planty_broker.simulator.provision import device_ids
from tests.integration.simulator.conftest import Broker, Observer

pytestmark = pytest.mark.integration


async def test_fleet_connects_everyone_and_sums_the_counters(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    ids = device_ids("fleet", 12)
    profile = DeviceProfile(interval_s=0.1, reconnect_min_s=0.05, reconnect_max_s=0.2)
    async with Fleet(
        [broker.credentials(i) for i in ids], profile, topics=topics, connect_concurrency=4
    ) as fleet:
        assert fleet.online == 12
        observer.send("fleet-0003", Command("c-1", "lamp.on"))
        await observer.wait_for(lambda m: m.channel == Channel.ACK)
        for i in ids:
            await observer.wait_count(i, Channel.TELEMETRY, 2)
        await asyncio.gather(*(d.wait_acked() for d in fleet.devices))
        # The total and each device's counters at one moment (no await between): the
        # devices go on publishing, and their goodbye below waits for the PUBACKs in flight.
        stats = fleet.stats()
        acked = [d.stats.telemetry_acked for d in fleet.devices]
    assert stats.devices == stats.online == 12
    assert stats.total.connects == 12
    assert stats.total.commands_executed == 1
    assert fleet["fleet-0003"].actuator("lamp").on
    assert stats.total.telemetry_acked == sum(acked)
    assert all(n >= 2 for n in acked), acked
    # A clean stop waited for every PUBACK of the telemetry it had sent.
    after = fleet.stats().total
    assert after.telemetry_acked == after.telemetry_published >= stats.total.telemetry_acked
    assert "12/12 online" in stats.line()
    # Every device said goodbye: the last retained status of each is offline.
    for i in ids:
        last = observer.of(i, Channel.STATUS)[-1]
        assert not decode_status(last.payload).online
    assert fleet.online == 0
