"""SimDevice against a real Mosquitto, watched by a bare MQTT client playing the broker side."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest

from planty_broker.protocol import (
    Channel,
    Command,
    Topics,
    decode_ack,
    decode_status,
    decode_telemetry,
)
from planty_broker.simulator.device import DeviceState, SimDevice
from planty_broker.simulator.firmware import Source
from planty_broker.simulator.profile import DeviceProfile, Faults
from tests.integration.simulator.conftest import Broker, Observer

pytestmark = pytest.mark.integration

FAST = DeviceProfile(interval_s=0.1, keepalive_s=5, reconnect_min_s=0.05, reconnect_max_s=0.2)


def device(
    broker: Broker, topics: Topics, profile: DeviceProfile = FAST, name: str = "dev"
) -> SimDevice:
    return SimDevice(
        broker.credentials(f"{name}-{uuid.uuid4().hex[:6]}"), profile, topics=topics, seed=7
    )


def cid() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


async def test_status_is_retained_online_with_the_declared_profile(
    broker: Broker, topics: Topics
) -> None:
    async with device(broker, topics) as dev:
        await dev.wait_online()
        late = Observer(
            broker, topics
        )  # subscribes after the fact: only a retained status reaches it
        await late.start()
        try:
            msg = await late.wait_for(lambda m: m.channel == Channel.STATUS)
        finally:
            await late.stop()
    assert msg.retain
    status = decode_status(msg.payload)
    assert status.online is True
    assert status.boot == 1
    assert status.sensors == ("temperature", "soil_moisture", "light")
    assert status.actuators == ("pump", "lamp")
    assert status.interval_s == pytest.approx(0.1)
    assert status.fw
    assert status.rssi is not None
    assert dev.stats.status_published == dev.stats.status_acked == 2  # online, then the goodbye


async def test_last_will_fires_on_kill_but_not_on_graceful_stop(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    killed = device(broker, topics, name="killed")
    stopped = device(broker, topics, name="stopped")
    await killed.start()
    await stopped.start()
    await killed.wait_online()
    await stopped.wait_online()

    await killed.kill()
    will = await observer.wait_for(
        lambda m: (
            m.device_id == killed.device_id
            and m.channel == Channel.STATUS
            and not decode_status(m.payload).online
        )
    )
    assert msgspec.json.decode(will.payload) == {"online": False}
    assert killed.state == DeviceState.OFF

    await stopped.stop()
    goodbye = await observer.wait_for(
        lambda m: (
            m.device_id == stopped.device_id
            and m.channel == Channel.STATUS
            and not decode_status(m.payload).online
        )
    )
    # the goodbye says it is one (protocol.md), so the broker can tell it from the will
    assert msgspec.json.decode(goodbye.payload) == {"online": False, "reason": "shutdown"}
    assert stopped.stats.status_acked == 2  # the goodbye was PUBACKed before DISCONNECT


async def test_telemetry_seq_rises_by_one_and_restarts_after_a_reboot(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    dev = device(broker, topics)
    await dev.start()
    first = await observer.wait_count(dev.device_id, Channel.TELEMETRY, 5)
    await dev.kill()
    # a kill (power cut) can fall between a PUBLISH and its PUBACK: such a reading counts as
    # published and not acked, and it may or may not have reached the broker
    published_1, acked_1 = dev.stats.telemetry_published, dev.stats.telemetry_acked
    assert acked_1 <= published_1
    await dev.start()  # reboot: boot 2, seq from 0 again
    await observer.wait_for(
        lambda m: (
            m.device_id == dev.device_id
            and m.channel == Channel.STATUS
            and decode_status(m.payload).boot == 2
        )
    )
    n_before = len(observer.of(dev.device_id, Channel.TELEMETRY))
    await observer.wait_count(dev.device_id, Channel.TELEMETRY, n_before + 3)
    await dev.stop()

    decoded = [
        decode_telemetry(m.payload)[0] for m in observer.of(dev.device_id, Channel.TELEMETRY)
    ]
    seqs = [t.seq for t in decoded]
    assert seqs[:5] == [0, 1, 2, 3, 4]
    assert seqs[n_before : n_before + 3] == [0, 1, 2]
    assert all(t.ts is not None and abs(t.ts / 1000 - time.time()) < 60 for t in decoded)
    assert set(decoded[0].readings) == {"temperature", "soil_moisture", "light"}
    assert 0.0 <= decoded[0].readings["soil_moisture"] <= 1.0
    assert len(first) >= 5
    # the second boot ended with a clean stop: everything it published was acked
    assert dev.stats.telemetry_acked - acked_1 == dev.stats.telemetry_published - published_1
    assert dev.stats.telemetry_acked <= len(decoded) <= dev.stats.telemetry_published


async def test_a_device_without_a_clock_omits_ts(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    profile = DeviceProfile(interval_s=0.1, send_ts=False)
    async with device(broker, topics, profile) as dev:
        msgs = await observer.wait_count(dev.device_id, Channel.TELEMETRY, 2)
    raw = msgspec.json.decode(msgs[0].payload)
    assert "ts" not in raw
    assert raw["seq"] == 0


async def test_ping_read_and_config(broker: Broker, topics: Topics, observer: Observer) -> None:
    async with device(broker, topics) as dev:
        await dev.wait_online()
        ping, read, config = cid(), cid(), cid()
        observer.send(dev.device_id, Command(ping, "ping"))
        observer.send(dev.device_id, Command(read, "read"))
        observer.send(dev.device_id, Command(config, "config", {"interval_s": 7}))
        acks = {}
        for c in (ping, read, config):
            msg = await observer.wait_for(
                lambda m, c=c: m.channel == Channel.ACK and decode_ack(m.payload).id == c
            )
            acks[c] = msgspec.json.decode(msg.payload)
        # The new interval is announced in a fresh retained status.
        await observer.wait_for(
            lambda m: m.channel == Channel.STATUS and decode_status(m.payload).interval_s == 7
        )
        assert dev.interval_s == 7

    assert acks[ping] == {"id": ping, "ok": True}  # at once, no result
    assert acks[read]["ok"] is True
    assert set(acks[read]["result"]["readings"]) == {"temperature", "soil_moisture", "light"}
    assert acks[config] == {"id": config, "ok": True, "result": {"interval_s": 7}}
    assert [e.action for e in dev.executions()] == ["ping", "read", "config"]


async def test_pump_on_with_seconds_switches_itself_off(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    async with device(broker, topics) as dev:
        await dev.wait_online()
        before = dev.readings()["soil_moisture"]
        c = cid()
        observer.send(dev.device_id, Command(c, "pump.on", {"seconds": 0.5}))
        msg = await observer.wait_for(
            lambda m: m.channel == Channel.ACK and decode_ack(m.payload).id == c
        )
        ack = decode_ack(msg.payload)
        assert ack.ok
        assert ack.result == {"on": True, "value": 1.0, "seconds": 0.5}
        assert dev.actuator("pump").on
        await asyncio.sleep(0.8)
        assert not dev.actuator("pump").on
        assert dev.readings()["soil_moisture"] > before  # the pot got water while it ran

    log = dev.executions()
    assert [(e.action, e.command_id, e.source) for e in log] == [
        ("pump.on", c, Source.COMMAND),
        ("pump.off", None, Source.AUTO),
    ]
    assert 0.45 <= log[1].at - log[0].at < 5  # after its seconds, not at once


async def test_duplicate_id_is_acked_with_the_first_result_and_runs_once(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    async with device(broker, topics) as dev:
        await dev.wait_online()
        c = cid()
        observer.send(dev.device_id, Command(c, "lamp.set", {"value": 0.4}))
        await observer.wait_for(lambda m: m.channel == Channel.ACK)
        # The same id again, even with different args: the first result comes back, nothing runs.
        observer.send(dev.device_id, Command(c, "lamp.set", {"value": 0.9}))
        acks = await observer.wait_count(dev.device_id, Channel.ACK, 2)

    assert acks[0].payload == acks[1].payload
    assert decode_ack(acks[1].payload).result == {"on": True, "value": 0.4}
    assert len(dev.executions(command_id=c)) == 1
    assert dev.actuator("lamp").value == 0.4
    assert dev.stats.commands_duplicate == 1


async def test_expired_command_is_refused_and_does_nothing(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    async with device(broker, topics) as dev:
        await dev.wait_online()
        c = cid()
        past = int(time.time() * 1000) - 1000
        observer.send(dev.device_id, Command(c, "pump.on", {"seconds": 5}, exp=past))
        msg = await observer.wait_for(lambda m: m.channel == Channel.ACK)
        assert not dev.actuator("pump").on

    assert msgspec.json.decode(msg.payload) == {"id": c, "ok": False, "error": "expired"}
    assert dev.executions() == []
    assert dev.stats.commands_expired == 1


async def test_unknown_action_and_bad_args_are_refused_with_an_error(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    async with device(broker, topics) as dev:
        await dev.wait_online()
        observer.send(dev.device_id, Command("c-fan", "fan.on"))
        observer.send(dev.device_id, Command("c-bad", "pump.set", {"value": "lots"}))
        acks = [
            decode_ack(m.payload) for m in await observer.wait_count(dev.device_id, Channel.ACK, 2)
        ]

    by_id = {a.id: a for a in acks}
    assert not by_id["c-fan"].ok
    assert "unknown action 'fan.on'" in (by_id["c-fan"].error or "")
    assert "pump.on" in (by_id["c-fan"].error or "")  # says what is supported
    assert not by_id["c-bad"].ok
    assert "value" in (by_id["c-bad"].error or "")
    assert dev.executions() == []


async def test_a_device_that_does_not_ack_still_runs_the_action_once(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    async with device(
        broker, topics, DeviceProfile(interval_s=60, faults=Faults(ack=False))
    ) as dev:
        await dev.wait_online()
        c = cid()
        for _ in range(3):  # the broker re-sends with the same id
            observer.send(dev.device_id, Command(c, "pump.on", {"seconds": 30}))
        async with asyncio.timeout(5):
            while dev.stats.commands_received < 3:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)

    assert observer.of(dev.device_id, Channel.ACK) == []
    assert len(dev.executions(command_id=c)) == 1
    assert dev.stats.acks_withheld == 3
    assert dev.stats.commands_duplicate == 2


async def test_ack_delay_set_at_runtime_delays_the_ack(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    async with device(broker, topics, DeviceProfile(interval_s=60)) as dev:
        await dev.wait_online()
        dev.faults = Faults(ack_delay_s=0.4)
        sent = time.monotonic()
        observer.send(dev.device_id, Command("c-slow", "ping"))
        await observer.wait_for(lambda m: m.channel == Channel.ACK)
        assert time.monotonic() - sent >= 0.4


async def test_go_silent_keeps_the_session_but_publishes_nothing(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    async with device(broker, topics) as dev:
        await observer.wait_count(dev.device_id, Channel.TELEMETRY, 2)
        dev.go_silent()
        assert await dev.wait_acked()  # what was already on its way has reached the server
        await asyncio.sleep(0.3)
        from_device = [m for m in observer.messages if m.channel != Channel.CMD]
        observer.send(dev.device_id, Command("c-quiet", "ping"))
        await asyncio.sleep(0.5)
        now = [m for m in observer.messages if m.channel != Channel.CMD]
        assert now == from_device  # no telemetry, no ack, no will
        assert dev.stats.commands_dropped == 1
        assert dev.state == DeviceState.ONLINE
        dev.resume()
        await observer.wait_count(
            dev.device_id, Channel.TELEMETRY, len(observer.of(dev.device_id, Channel.TELEMETRY)) + 1
        )


async def test_dropped_connection_reconnects_and_seq_continues(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    async with device(broker, topics) as dev:
        await observer.wait_count(dev.device_id, Channel.TELEMETRY, 3)
        dev.drop_connection()
        await observer.wait_for(
            lambda m: m.channel == Channel.STATUS and not decode_status(m.payload).online
        )
        n = len(observer.of(dev.device_id, Channel.TELEMETRY))
        await observer.wait_count(dev.device_id, Channel.TELEMETRY, n + 3)

    seqs = [
        decode_telemetry(m.payload)[0].seq for m in observer.of(dev.device_id, Channel.TELEMETRY)
    ]
    assert seqs == sorted(set(seqs))  # rising, no repeat within the boot
    assert dev.stats.connects == 2
    assert dev.stats.disconnects == 1
    online = [decode_status(m.payload) for m in observer.of(dev.device_id, Channel.STATUS)]
    assert [s.online for s in online][:3] == [True, False, True]
    assert {s.boot for s in online if s.online} == {1}  # a blip is not a reboot


async def test_malformed_every_sends_bad_payloads_without_taking_a_seq(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    profile = DeviceProfile(interval_s=0.05, faults=Faults(malformed_every=3))
    async with device(broker, topics, profile) as dev:
        msgs = await observer.wait_count(dev.device_id, Channel.TELEMETRY, 9)
    bad, good = [], []
    for m in msgs[:9]:
        try:
            good.append(decode_telemetry(m.payload)[0].seq)
        except ValueError:
            bad.append(m.payload)
    assert len(bad) == 3
    assert good == [0, 1, 2, 3, 4, 5]
    assert dev.stats.malformed_published >= 3


async def test_command_drop_rate_loses_commands_before_the_firmware(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    async with device(
        broker, topics, DeviceProfile(interval_s=60, faults=Faults(drop_rate=1.0))
    ) as dev:
        await dev.wait_online()
        observer.send(dev.device_id, Command("c-lost", "pump.on"))
        async with asyncio.timeout(5):
            while dev.stats.commands_received < 1:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
    assert observer.of(dev.device_id, Channel.ACK) == []
    assert dev.executions() == []
    assert not dev.actuator("pump").on
    assert dev.stats.commands_dropped == 1


async def test_telemetry_drop_rate_leaves_seq_gaps(
    broker: Broker, topics: Topics, observer: Observer
) -> None:
    profile = DeviceProfile(interval_s=60, faults=Faults(telemetry_drop_rate=0.5))
    async with device(broker, topics, profile) as dev:
        await dev.wait_online()
        published = await dev.burst(40)
        assert await dev.wait_acked()
        msgs = await observer.wait_count(dev.device_id, Channel.TELEMETRY, published)
    seqs = [decode_telemetry(m.payload)[0].seq for m in msgs]
    assert 0 < published < 40
    assert seqs == sorted(seqs)
    assert len(seqs) == len(set(seqs))
    assert dev.next_seq - len(seqs) == dev.stats.telemetry_dropped  # every missing seq is a drop
