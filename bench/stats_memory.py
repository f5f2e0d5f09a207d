"""Statistics cost: memory per device with a populated fleet, and the cost of each update.

Builds a `FleetStats` of N devices (default 10,000) and replays D days (default 7)
of round trips, one every S seconds per device (default 300), in time order, so
every ring slot of every device is filled as it would be after a week of
uptime. Counters get a week's worth of totals. Memory is measured three ways:
the growth of the process's resident memory while building; tracemalloc over
a pickled copy of the whole fleet (tracing the build itself is ~20x slower);
and a walk over the objects of 50 devices (sys.getsizeof). Then it times the
hot-path calls and the queries the API will make. Timings are only as quiet as
the machine: run it alone.

    .venv/bin/python bench/stats_memory.py
    .venv/bin/python bench/stats_memory.py --devices 1000 --rtt-every-s 60 --spread wide
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import pickle
import random
import sys
import time
import timeit
import tracemalloc
from array import array
from typing import Any

from planty_broker.domain.models import PresenceCause, PresenceState, PresenceTransition
from planty_broker.domain.stats.availability import availability
from planty_broker.domain.stats.counters import DeviceStats, FleetStats, ReconnectCause
from planty_broker.domain.stats.sketch import LatencySketch
from planty_broker.domain.stats.windowed import DAY_MS, HOUR_MS, WEEK_MS, WindowedSketch
from planty_broker.protocol import ErrorKind

T0 = 1_764_028_800_000
KIB = 1024


def rtt_source(rng: random.Random, spread: str) -> tuple[float, float]:
    """Per-device (mu, sigma) of a log-normal round trip in ms."""
    if spread == "wide":
        return math.log(rng.uniform(20, 200)), 1.5
    return math.log(rng.uniform(20, 200)), rng.uniform(0.3, 0.7)


def one_rtt(rng: random.Random, mu: float, sigma: float) -> float:
    value = rng.lognormvariate(mu, sigma)
    if rng.random() < 0.01:  # 1% stragglers: a retry or a busy device, 10-100x slower
        value *= rng.uniform(10, 100)
    return min(value, 60_000.0)


def week_of_counters(rng: random.Random, days: float) -> dict[str, int]:
    msgs = int(days * 1440) + rng.randint(0, 50)  # telemetry every 60 s
    return {
        "msgs_in": msgs,
        "msgs_out": msgs // 20,
        "bytes_in": msgs * rng.randint(90, 160),
        "bytes_out": msgs * 5,
        "readings": msgs,
        "reading_values": msgs * 3,
        "cmd_sent": msgs // 20,
        "cmd_acked": msgs // 21,
        "cmd_failed": rng.randint(0, 30),
        "cmd_expired": rng.randint(0, 30),
        "err_malformed_payload": rng.randint(0, 300),
        "err_ack_timeout": rng.randint(0, 300),
        "rc_last_will": rng.randint(0, 20),
        "rc_reboot": rng.randint(0, 5),
    }


def populate(n: int, days: float, every_s: int, spread: str) -> tuple[FleetStats, int]:
    rng = random.Random(42)
    fleet = FleetStats(T0)
    devices: list[tuple[DeviceStats, float, float, int]] = []
    for i in range(n):
        stats = fleet.device(f"plant-{i:05d}", T0)
        stats.restore_counters(week_of_counters(rng, days))
        stats.message_in(120, T0)
        stats.reading(3)
        stats.error(ErrorKind.OVERSIZE, T0)
        stats.command_final("superseded")
        stats.reconnect(ReconnectCause.SILENCE)
        stats.vitals(
            T0,
            rssi=-rng.randint(40, 90),
            heap=rng.randint(40_000, 160_000),
            uptime_s=rng.randint(0, 10**6),
            fw="1.4.2",
            boot=rng.randint(1, 50),
        )
        mu, sigma = rtt_source(rng, spread)
        devices.append((stats, mu, sigma, rng.randrange(every_s * 1000)))
    step_ms = every_s * 1000
    end = T0 + int(days * DAY_MS)
    t = T0
    while t < end:
        for stats, mu, sigma, offset in devices:
            stats.round_trip(one_rtt(rng, mu, sigma), t + offset)
        t += step_ms
    return fleet, end


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by obj and what it references (slots, lists, arrays, bytes, numbers, str)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, (type, bool)):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, (list, tuple)):
        size += sum(deep_size(x, seen) for x in obj)
    elif isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (int, float, str, bytes, array)):
        pass
    else:
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if name.startswith("_layout") or name in ("mapping", "_mapping", "_fleet_latency"):
                    continue  # shared by every device
                size += deep_size(getattr(obj, name, None), seen)
    return size


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def per_call_ns(stmt: Any, number: int = 200_000) -> float:
    best = min(timeit.repeat(stmt, number=number, repeat=5))
    return best / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=7, help="e.g. 0.0417 for an hour")
    parser.add_argument("--rtt-every-s", type=int, default=300)
    parser.add_argument("--spread", choices=("normal", "wide"), default="normal")
    args = parser.parse_args()

    gc.collect()
    rss_before = rss_bytes()
    started = time.perf_counter()
    fleet, now = populate(args.devices, args.days, args.rtt_every_s, args.spread)
    build_s = time.perf_counter() - started
    gc.collect()
    rss_growth = rss_bytes() - rss_before
    blob = pickle.dumps(fleet, protocol=pickle.HIGHEST_PROTOCOL)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    clone = pickle.loads(blob)
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(clone) == args.devices
    del clone, blob
    samples = int(args.days * 86_400) // args.rtt_every_s

    sample_ids = [f"plant-{i:05d}" for i in range(0, args.devices, max(args.devices // 50, 1))]
    sketch_sizes, counter_sizes = [], []
    for device_id in sample_ids:
        stats = fleet.get(device_id)
        assert stats is not None
        sketch_sizes.append(deep_size(stats.latency))
        counter_sizes.append(deep_size(stats) - deep_size(stats.latency))
    n = args.devices
    sketch_kib = sum(sketch_sizes) / len(sketch_sizes) / KIB
    counters_kib = sum(counter_sizes) / len(counter_sizes) / KIB
    print(f"fleet: {n} devices, {args.days:g} days, a round trip every {args.rtt_every_s} s")
    print(f"  ({samples} per device, spread {args.spread}); built in {build_s:.0f} s")
    print("memory per device (aim < 20 KiB):")
    print(f"  tracemalloc, pickled copy of the fleet: {traced / n / KIB:6.2f} KiB")
    print(f"  resident memory growth while building:  {rss_growth / n / KIB:6.2f} KiB")
    print(
        f"  object walk, {len(sample_ids)} devices: latency {sketch_kib:.2f} KiB "
        f"(max {max(sketch_sizes) / KIB:.2f}), counters + vitals {counters_kib:.2f} KiB"
    )
    print(f"  fleet latency sketch: {deep_size(fleet.latency) / KIB:.1f} KiB once per gateway")

    # ------------------------------------------------------------ per-call costs
    stats = fleet.device("plant-00001", now)
    lone = DeviceStats(T0)
    sketch = LatencySketch()
    windowed = WindowedSketch()
    for i in range(1000):
        sketch.add(20.0 + i % 200)
        windowed.add(20.0 + i % 200, now)
        lone.round_trip(20.0 + i % 200, now)
    values = [random.lognormvariate(4, 0.5) for _ in range(4096)]
    it = iter(values * 10_000)
    nxt = it.__next__
    empty = per_call_ns(lambda: None)
    print(f"per call (ns, best of 5, minus an empty call of {empty:.0f} ns):")
    rows = {
        "telemetry: message_in + reading": lambda: (stats.message_in(120, now), stats.reading(3)),
        "error(kind)": lambda: stats.error(ErrorKind.MALFORMED, now),
        "LatencySketch.add": lambda: sketch.add(nxt()),
        "WindowedSketch.add (3 levels)": lambda: windowed.add(nxt(), now),
        "DeviceStats.round_trip (device + fleet)": lambda: stats.round_trip(nxt(), now),
        "round_trip, no fleet sketch": lambda: lone.round_trip(nxt(), now),
    }
    for name, call in rows.items():
        print(f"  {name:42s} {per_call_ns(call) - empty:8.0f}")

    # ------------------------------------------------------------ queries
    print("queries (ms):")
    for label, window in (("1h", HOUR_MS), ("1d", DAY_MS), ("1w", WEEK_MS)):
        t = min(timeit.repeat(lambda w=window: stats.snapshot(now, w), number=200, repeat=3)) / 200
        print(f"  device snapshot, window {label}: {t * 1e3:8.3f}")
    started = time.perf_counter()
    for _, s in fleet.items():
        s.latency.quantiles((0.99,), HOUR_MS, now)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    print(f"  p99 over 1h for every device (device list): {elapsed_ms:8.1f}")
    started = time.perf_counter()
    fleet.snapshot(now, DAY_MS)
    print(f"  fleet snapshot, window 1d: {(time.perf_counter() - started) * 1e3:8.1f}")
    rng = random.Random(1)
    states = (PresenceState.ONLINE, PresenceState.LATE, PresenceState.OFFLINE)
    history = [
        PresenceTransition(
            "plant-00001", rng.choice(states), now - rng.randrange(WEEK_MS), PresenceCause.MESSAGE
        )
        for _ in range(500)
    ]
    t = (
        min(timeit.repeat(lambda: availability(history, now - WEEK_MS, now), number=100, repeat=3))
        / 100
    )
    print(f"  availability over 1w from 500 unsorted transitions: {t * 1e3:8.3f}")


if __name__ == "__main__":
    main()
