"""Statistics cost: ingest throughput with statistics on vs off (same run), memory per device.

1. Throughput. Two ingest stacks in one process, identical but for the stats
   service (on: `StatsService` counting every message; off: `stats=None`). Each
   round pushes the same pre-encoded QoS 1 telemetry of N devices through
   `IngestService.handle` and waits for every PUBACK callback (sent after the
   batch commit). Rounds alternate on/off so drift hits both; the ratio of the
   medians is the figure (aim >= 0.9). `--store memory` (default) leaves only
   the in-process path, the strictest ratio; `--store sqlite` adds real commits.
2. Memory. A `StatsService` of 10,000 devices fed a week through its own inputs:
   a round trip every `--rtt-every-s` per device, status vitals, a few presence
   transitions and errors, the device-list summary cached. Memory per device is
   the growth of resident memory divided by N, with an object walk of 50 devices
   as a breakdown (aim < 20 KiB).

    .venv/bin/python bench/stats.py
    .venv/bin/python bench/stats.py --devices 1000 --messages 100000 --store sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

from planty_broker.domain.models import DeviceRecord, PresenceCause, PresenceState
from planty_broker.domain.models import PresenceTransition as Transition
from planty_broker.domain.stats.windowed import DAY_MS
from planty_broker.protocol import Channel, Status, Telemetry, Topics, encode
from planty_broker.services.bus import Bus, DeviceError, PresenceChanged
from planty_broker.services.ingest import IngestService
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry
from planty_broker.services.stats.service import StatsService
from planty_broker.storage.memory import MemoryStore

KIB = 1024
T0 = 1_764_028_800_000


# ---------------------------------------------------------------- throughput


async def open_store(kind: str, folder: Path, name: str) -> Any:
    if kind == "memory":
        store: Any = MemoryStore()
    else:
        from planty_broker.storage.sql import SqlStore

        store = SqlStore(f"sqlite:///{folder / name}.sqlite3", sqlite_synchronous="NORMAL")
    await store.open()
    return store


async def stack(kind: str, folder: Path, name: str, ids: list[str], stats_on: bool) -> Any:
    store = await open_store(kind, folder, name)
    for device_id in ids:
        await store.add_device(DeviceRecord(id=device_id, created_at_ms=T0, token_hash="h"))
    bus = Bus()
    registry = DeviceRegistry(store, bus, lambda t: t)
    await registry.load()
    presence = PresenceService(
        store, bus, registry, keepalive_s=60, default_interval_s=60, check_every_s=3600
    )
    await presence.start()
    stats = StatsService(store, bus, registry, presence) if stats_on else None
    if stats is not None:
        await stats.start()
    ingest = IngestService(
        store, bus, registry, presence, Topics(), max_payload_bytes=65536, stats=stats
    )
    await ingest.start()
    return store, presence, stats, ingest


async def one_round(ingest: IngestService, messages: list[tuple[str, bytes]]) -> float:
    done = asyncio.Event()
    left = len(messages)

    def ack() -> None:
        nonlocal left
        left -= 1
        if not left:
            done.set()

    handle = ingest.handle
    started = time.process_time()
    for i, (topic, payload) in enumerate(messages):
        handle(topic, payload, False, ack)
        if i % 500 == 499:
            await asyncio.sleep(0)  # let the batch writer commit, like the MQTT link would
    await done.wait()
    # CPU time of this process: other programs on the machine do not count against a round.
    return len(messages) / (time.process_time() - started)


async def throughput(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    ids = [f"plant-{i:05d}" for i in range(args.devices)]
    topics = Topics()
    seq = dict.fromkeys(ids, 0)

    def batch() -> list[tuple[str, bytes]]:
        out = []
        for i in range(args.messages):
            d = ids[i % len(ids)]
            seq[d] += 1
            readings = {"temperature": rng.uniform(15, 30), "soil_moisture": rng.random()}
            tel = Telemetry(seq=seq[d], readings=readings, ts=T0 + i)
            out.append((topics.device(d, Channel.TELEMETRY), encode(tel)))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        on = await stack(args.store, folder, "on", ids, True)
        off = await stack(args.store, folder, "off", ids, False)
        await one_round(on[3], batch())  # warm up both
        await one_round(off[3], batch())
        rates: dict[str, list[float]] = {"on": [], "off": []}
        for r in range(args.rounds):
            order = (("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on))
            for label, s in order:
                msgs = batch()
                gc.collect()
                rates[label].append(await one_round(s[3], msgs))
        for _, presence, stats, ingest in (on, off):
            await ingest.stop()
            if stats is not None:
                await stats.stop()
            await presence.stop()
        stats_on = on[2]
        assert stats_on is not None
        counted = sum(s.readings for _, s in stats_on.fleet.items())
        expected = args.messages * (args.rounds // 2 + args.rounds % 2 + 1)
        assert counted >= expected, (counted, expected)
        for s in (on, off):
            await s[0].close()

    med_on, med_off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(
        f"throughput ({args.store} store, {args.devices} devices, {args.messages} msgs "
        f"x {args.rounds} rounds, alternating):"
    )
    print("  (rates per CPU second of the gateway process, so other load barely moves them)")
    print(f"  stats on : median {med_on:9,.0f} msg/s  rounds {[round(x) for x in rates['on']]}")
    print(f"  stats off: median {med_off:9,.0f} msg/s  rounds {[round(x) for x in rates['off']]}")
    best_on, best_off = max(rates["on"]), max(rates["off"])
    print(f"  ratio on/off: medians {med_on / med_off:.3f}, best rounds {best_on / best_off:.3f}")
    print("  (aim >= 0.9)")
    await_micro(ids)


def await_micro(ids: list[str]) -> None:
    """The stats work one telemetry message costs, alone (best of 5): counters of two calls."""
    import timeit

    from planty_broker.domain.stats.counters import FleetStats

    fleet = FleetStats(T0)
    for d in ids:
        fleet.device(d, T0)
    device_id = ids[len(ids) // 2]
    get = fleet.get

    def per_message() -> None:
        fleet.device(device_id, T0).message_in(120, T0)  # in handle()
        s = get(device_id)  # in the after-commit bookkeeping
        if s is not None:
            s.reading(2)

    n = 200_000
    ns = min(timeit.repeat(per_message, number=n, repeat=5)) / n * 1e9
    empty = min(timeit.repeat(lambda: None, number=n, repeat=5)) / n * 1e9
    print(
        f"  stats work per telemetry message: {ns - empty:.0f} ns (best of 5, empty call removed)"
    )


# ---------------------------------------------------------------- memory


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def deep_size(obj: Any, seen: set[int], skip: set[int]) -> int:
    if id(obj) in seen or id(obj) in skip or obj is None or isinstance(obj, (type, bool)):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, (list, tuple)):
        size += sum(deep_size(x, seen, skip) for x in obj)
    elif isinstance(obj, dict):
        size += sum(deep_size(k, seen, skip) + deep_size(v, seen, skip) for k, v in obj.items())
    elif isinstance(obj, (int, float, str, bytes, bytearray, array)):
        pass
    else:
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                size += deep_size(getattr(obj, name, None), seen, skip)
    return size


async def memory(args: argparse.Namespace) -> None:
    n = args.mem_devices
    rng = random.Random(2)
    store = MemoryStore()
    await store.open()
    ids = [f"plant-{i:05d}" for i in range(n)]
    for device_id in ids:
        await store.add_device(DeviceRecord(id=device_id, created_at_ms=T0, token_hash="h"))
    bus = Bus()
    registry = DeviceRegistry(store, bus, lambda t: t)
    await registry.load()
    presence = PresenceService(
        store, bus, registry, keepalive_s=60, default_interval_s=60, check_every_s=3600
    )
    gc.collect()
    rss_before = rss_bytes()
    started = time.perf_counter()
    clock = [T0]
    stats = StatsService(store, bus, registry, presence, clock=lambda: clock[0])
    await stats.start()
    await stats.backfilled.wait()
    step = args.rtt_every_s * 1000
    end = T0 + 7 * DAY_MS
    params = [(math.log(rng.uniform(20, 200)), rng.uniform(0.3, 0.7)) for _ in ids]
    offsets = [rng.randrange(step) for _ in ids]
    flaps_every = DAY_MS // args.flaps_per_day
    record = stats.record_rtt
    t = T0
    while t < end:
        for device_id, (mu, sigma), off in zip(ids, params, offsets, strict=True):
            record(device_id, rng.lognormvariate(mu, sigma), t + off)
        if (t - T0) % flaps_every < step:  # each device drops and comes back
            for device_id in ids:
                for state, cause in (
                    (PresenceState.OFFLINE, PresenceCause.LAST_WILL),
                    (PresenceState.ONLINE, PresenceCause.STATUS_ONLINE),
                ):
                    bus.publish(PresenceChanged(Transition(device_id, state, t, cause), "x"))
        t += step
    clock[0] = end
    for i, device_id in enumerate(ids):
        status = Status(
            online=True, fw="1.4.2", boot=i % 50, rssi=-60, heap=90_000, uptime_s=3600 + i
        )
        stats.on_status(device_id, status, False, end)
        bus.publish(DeviceError(device_id, "malformed_payload", "x", end))
        stats.command_sent(device_id, 90)
        stats.command_final(device_id, "acked")
        stats.fleet.device(device_id, end).message_in(120, end)
        stats.device_summary(device_id)  # the device list's cached summary
    build_s = time.perf_counter() - started
    gc.collect()
    rss_growth = rss_bytes() - rss_before

    shared = {id(stats.layout), id(stats.layout.mapping), id(stats.fleet.latency)}
    sample = ids[:: max(n // 50, 1)]
    parts: dict[str, list[int]] = {"counters+latency": [], "presence history": [], "summary": []}
    for device_id in sample:
        seen: set[int] = set()
        parts["counters+latency"].append(deep_size(stats.fleet.get(device_id), seen, shared))
        parts["presence history"].append(deep_size(stats.history[device_id], seen, shared))
        parts["summary"].append(deep_size(stats._summaries[device_id], seen, shared))
    print(
        f"memory: {n} devices, 7 days, a round trip every {args.rtt_every_s} s per device, "
        f"{args.flaps_per_day} offline/online flaps a day; fed in {build_s:.0f} s"
    )
    print(f"  resident memory growth / device: {rss_growth / n / KIB:6.2f} KiB (aim < 20 KiB)")
    walk = {k: sum(v) / len(v) / KIB for k, v in parts.items()}
    print(
        f"  object walk of {len(sample)} devices (counts shared small ints/strings, so high): "
        + ", ".join(f"{k} {v:.2f} KiB" for k, v in walk.items())
        + f" = {sum(walk.values()):.2f} KiB"
    )
    t0 = time.perf_counter()
    stats.fleet_stats(DAY_MS, end)
    fleet_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    stats.device_stats(ids[0], 7 * DAY_MS, end)
    device_ms = (time.perf_counter() - t0) * 1000
    print(f"  GET /stats?window=1d over the fleet: {fleet_ms:.0f} ms")
    print(f"  GET /devices/{{id}}/stats?window=7d: {device_ms:.1f} ms")
    await stats.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1000, help="throughput: devices")
    p.add_argument("--messages", type=int, default=50_000, help="throughput: messages a round")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    p.add_argument("--mem-devices", type=int, default=10_000)
    p.add_argument("--rtt-every-s", type=int, default=300)
    p.add_argument("--flaps-per-day", type=int, default=4)
    p.add_argument("--skip", choices=("throughput", "memory"), default=None)
    args = p.parse_args()
    print(
        f"{platform.node()} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} cores | Python {platform.python_version()} | "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    # Memory first, in a fresh process: memory freed by the throughput rounds would be
    # reused and hide part of the growth.
    if args.skip != "memory":
        asyncio.run(memory(args))
    if args.skip != "throughput":
        asyncio.run(throughput(args))


if __name__ == "__main__":
    main()
