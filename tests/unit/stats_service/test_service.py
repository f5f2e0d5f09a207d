"""StatsService on the memory store: reconnect causes, errors, backfill, snapshot, removal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from planty_broker.config import StatsSettings
from planty_broker.domain.models import (
    DeviceRecord,
    PresenceCause,
    PresenceState,
    PresenceTransition,
)
from planty_broker.domain.stats.windowed import HOUR_MS
from planty_broker.protocol import Status
from planty_broker.services.bus import Bus, DeviceError, DevicesChanged
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry
from planty_broker.services.stats.service import StatsService
from planty_broker.storage.memory import MemoryStore

pytestmark = pytest.mark.asyncio(loop_scope="session")

T0 = 1_764_028_800_000  # a fixed "now" for exact figures


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass
class Rig:
    store: MemoryStore
    bus: Bus
    registry: DeviceRegistry
    presence: PresenceService
    stats: StatsService
    clock: Clock


async def build(store: MemoryStore | None = None, ids: tuple[str, ...] = ("dev-a",)) -> Rig:
    if store is None:
        store = MemoryStore()
        await store.open()
        for i in ids:
            await store.add_device(DeviceRecord(id=i, created_at_ms=0, token_hash="h"))
    bus = Bus()
    registry = DeviceRegistry(store, bus, lambda t: t)
    await registry.load()
    presence = PresenceService(
        store, bus, registry, keepalive_s=60, default_interval_s=10, check_every_s=3600
    )
    clock = Clock()
    stats = StatsService(store, bus, registry, presence, StatsSettings(), clock=clock)
    await presence.start()
    await stats.start()
    await stats.backfilled.wait()
    return Rig(store, bus, registry, presence, stats, clock)


@pytest_asyncio.fixture(loop_scope="session")
async def rig() -> AsyncIterator[Rig]:
    r = await build()
    yield r
    await r.stats.stop()
    await r.presence.stop()


def status(boot: int | None = 1, online: bool = True) -> Status:
    return Status(online=online, boot=boot, fw="1.0", rssi=-70, heap=5000, uptime_s=9)


def reconnects(r: Rig) -> dict[str, int]:
    return r.stats.device("dev-a").reconnects()


async def test_last_will_then_status_is_a_last_will_reconnect(rig: Rig) -> None:
    r = rig
    r.stats.on_status("dev-a", status(), False, T0)
    r.presence.on_status("dev-a", True, 10, T0)
    assert sum(reconnects(r).values()) == 0  # first sight is not a reconnect
    r.presence.on_status("dev-a", False, None, T0 + 1000)  # the last will
    r.stats.on_status("dev-a", status(), False, T0 + 2000)
    assert reconnects(r)["last_will"] == 1
    s = r.stats.device("dev-a")
    assert (s.rssi, s.heap, s.uptime_s, s.fw, s.boot) == (-70, 5000, 9, "1.0", 1)


async def test_new_boot_is_a_reboot_even_unseen(rig: Rig) -> None:
    r = rig
    r.stats.on_status("dev-a", status(boot=1), False, T0)
    r.presence.on_status("dev-a", True, 10, T0)
    r.stats.on_status("dev-a", status(boot=2), False, T0 + 500)  # the will raced the restart
    assert reconnects(r) == {**dict.fromkeys(reconnects(r), 0), "reboot": 1}


async def test_back_from_silence_by_telemetry(rig: Rig) -> None:
    r = rig
    r.presence.on_status("dev-a", True, 10, T0)
    r.presence.check(T0 + 31_000 + 60_000)  # past the silence bound
    assert r.presence.get("dev-a").state is PresenceState.OFFLINE
    r.presence.on_activity("dev-a", T0 + 100_000)
    assert reconnects(r)["silence"] == 1


async def test_errors_counted_per_device_or_unattributed(rig: Rig) -> None:
    r = rig
    r.bus.publish(DeviceError("dev-a", "ack_timeout", "no ack", T0))
    r.bus.publish(DeviceError("dev-a", "unknown_command_id", "?", T0))
    r.bus.publish(DeviceError("ghost-1", "unknown_device", "who?", T0))
    r.bus.publish(DeviceError(None, "bad_topic", "where?", T0))
    errors = r.stats.device("dev-a").errors()
    assert errors["ack_timeout"] == 1 and errors["unknown_command_id"] == 1
    assert sum(errors.values()) == 2
    assert r.stats.unattributed == {"unknown_device": 1, "bad_topic": 1}
    assert "ghost-1" not in r.stats.fleet  # no stats object for ids that are not registered


async def test_commands_and_rtt(rig: Rig) -> None:
    r = rig
    r.stats.command_sent("dev-a", 80)
    r.stats.command_sent("dev-a", 80)  # a re-send
    r.stats.command_final("dev-a", "acked")
    r.stats.record_rtt("dev-a", 12.5, T0)
    r.stats.record_rtt("nobody", 1.0, T0)  # ignored
    out = r.stats.device_stats("dev-a", HOUR_MS, T0)
    assert out["commands"]["sent"] == 2 and out["commands"]["acked"] == 1
    assert out["messages_out"] == 2 and out["bytes_out"] == 160
    assert out["latency"]["count"] == 1
    assert out["latency"]["p50_ms"] == pytest.approx(12.5, rel=0.01)
    fleet = r.stats.fleet_stats(HOUR_MS, T0)
    assert fleet["latency"]["count"] == 1 and fleet["devices"] == 1


async def test_availability_backfilled_from_the_store() -> None:
    store = MemoryStore()
    await store.open()
    await store.add_device(DeviceRecord(id="dev-a", created_at_ms=0, token_hash="h"))
    h = HOUR_MS
    await store.append_presence(
        [
            PresenceTransition("dev-a", PresenceState.ONLINE, T0 - 30 * h, PresenceCause.MESSAGE),
            PresenceTransition("dev-a", PresenceState.OFFLINE, T0 - 2 * h, PresenceCause.SILENCE),
            PresenceTransition("dev-a", PresenceState.ONLINE, T0 - h // 2, PresenceCause.MESSAGE),
        ]
    )
    r = await build(store)
    # The gateway "starts" after T0 (PresenceService uses the wall clock); ask about T0 itself.
    day = r.stats.availability("dev-a", 24 * h, T0)
    assert (day.online_ms, day.offline_ms) == (22 * h + h // 2, h + h // 2)
    hour = r.stats.availability("dev-a", h, T0)
    assert (hour.online_ms, hour.offline_ms, hour.unknown_ms) == (h // 2, h // 2, 0)
    week = r.stats.availability("dev-a", 7 * 24 * h, T0)
    assert week.unknown_ms == 7 * 24 * h - 30 * h  # before its first transition: not known
    await r.stats.stop()
    await r.presence.stop()


async def test_counters_survive_a_restart_and_removal_forgets() -> None:
    r = await build(ids=("dev-a", "dev-b"))
    r.stats.fleet.device("dev-a", T0).message_in(100, T0)
    r.stats.on_status("dev-a", status(boot=7), False, T0)
    r.bus.publish(DeviceError("dev-a", "oversize", "big", T0))
    await r.stats.stop()
    await r.presence.stop()

    again = await build(r.store, ids=())
    s = again.stats.device("dev-a")
    assert (s.msgs_in, s.bytes_in, s.boot) == (1, 100, 7)
    assert s.errors()["oversize"] == 1
    again.bus.publish(DevicesChanged("dev-b", "removed"))
    assert again.stats.device("dev-b") is None and "dev-b" not in again.stats.history
    await again.stats.stop()
    await again.presence.stop()


async def test_device_summary_is_cached() -> None:
    r = await build()
    first = r.stats.device_summary("dev-a")
    r.stats.fleet.device("dev-a", T0).message_in(10, T0)  # the hot path does not invalidate
    assert r.stats.device_summary("dev-a") is first  # within summary_cache_s
    r.bus.publish(DeviceError("dev-a", "oversize", "big", T0))  # an error does
    assert r.stats.device_summary("dev-a")["stats"]["errors_total"] == 1
    r.stats.on_status("dev-a", status(), False, T0)
    assert r.stats.device_summary("dev-a")["stats"]["rssi"] == -70
    await r.stats.stop()
    await r.presence.stop()


async def test_a_device_flapping_all_week_keeps_a_bounded_presence_history(rig: Rig) -> None:
    from planty_broker.services.stats import service as stats_module

    r = rig
    bound = stats_module.MAX_TRANSITIONS
    for i in range(3 * bound):  # one transition a second: far more than the bound
        r.presence.on_status("dev-a", i % 2 == 0, 10, T0 + i * 1000)
    h = r.stats.history["dev-a"]
    assert len(h) <= bound + bound // 10
    assert r.stats.history_trimmed >= 3 * bound - len(h) - 1
    # the newest hour is still exact
    a = h.availability("dev-a", T0 + (3 * bound - 3600) * 1000, T0 + 3 * bound * 1000)
    assert a.online_ms == a.offline_ms == 1_800_000
