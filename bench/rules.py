"""Readings/s through the rule evaluator, 10,000 devices x 5 rules, against rules disabled.

Usage: .venv/bin/python bench/rules.py [--devices 10000] [--per-device 20] [--repeat 5]

The telemetry stream (device, values, timestamp; plus the same messages as JSON
payloads) is generated before timing. Each timed pass runs the same loop over the
same stream:
  rules     RuleIndex with 5 enabled rules per device (set_thresholds + 1 humidity rule)
  empty     RuleIndex with no rules (the engine with nothing to do)
  disabled  RuleIndex with the same 50,000 rules, all disabled
The figure is rules / empty (issue 5 aims at >= 0.8). It is shown twice: for the
bare evaluator loop (where "empty" does nearly nothing, so this ratio only shows
the absolute cost per message), and for the broker's in-process telemetry step as
it exists today (topic parse, payload decode with the protocol codec, the Reading
value, then the rules; storage, presence and stats are not included).
Best of --repeat passes, modes interleaved, each on a fresh index fed --warmup
untimed messages per device first (past start-up transients such as every fan's
first `fan.off`), so every pass starts alike. Rates use this process's CPU time
(`time.process_time`), since the machine may be shared with other work.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from planty_broker.domain.models import Reading
from planty_broker.domain.rules.eval import Outcome
from planty_broker.domain.rules.index import RuleIndex
from planty_broker.domain.rules.model import Op, Rule
from planty_broker.domain.rules.thresholds import thresholds_to_rules
from planty_broker.protocol import Channel, Telemetry, Topics, decode_telemetry, encode

T0 = 1_764_230_400_000  # 2025-11-27 08:00 UTC: inside the lamp window
THRESHOLDS = {"temperature": {"max": 30}, "soil_moisture": {"min": 0.3}, "light": {"min": 200}}
Stream = list[tuple[str, dict[str, float], int]]
TOPICS = Topics()
TOPIC_OF: dict[str, str] = {}  # device id -> its telemetry topic, filled before timing


def device_rules(device_id: str) -> list[Rule]:
    """5 rules: pump, lamp, fan on, fan off (set_thresholds) and a humidity vent rule."""
    rules = thresholds_to_rules(device_id, THRESHOLDS, ["pump", "lamp", "fan"])
    rules.append(
        Rule(
            f"vent.{device_id}",
            (device_id,),
            "humidity",
            Op.GT,
            0.85,
            "fan.on",
            {"seconds": 300},
            rearm=0.75,
            cooldown_s=900,
        )
    )
    return rules


def make_stream(devices: list[str], per_device: int, seed: int = 5) -> Stream:
    """Random walks near the thresholds, one message per device per minute, interleaved."""
    rng = random.Random(seed)
    walk = {
        d: [
            rng.uniform(20, 32),
            rng.uniform(0.25, 0.5),
            rng.uniform(100, 900),
            rng.uniform(0.5, 0.9),
        ]
        for d in devices
    }
    stream: Stream = []
    for minute in range(per_device):
        for i, device_id in enumerate(devices):
            t, s, light, h = walk[device_id]
            t = min(40.0, max(10.0, t + rng.gauss(0, 0.4)))
            s = min(1.0, max(0.0, s + rng.gauss(-0.002, 0.02)))
            light = max(0.0, light + rng.gauss(0, 40))
            h = min(1.0, max(0.0, h + rng.gauss(0, 0.02)))
            walk[device_id] = [t, s, light, h]
            ts = T0 + minute * 60_000 + i * 6  # devices spread over the minute
            values = {
                "temperature": round(t, 2),
                "soil_moisture": round(s, 3),
                "light": round(light, 1),
                "humidity": round(h, 3),
                "battery": 3.9,
            }
            stream.append((device_id, values, ts))
    return stream


def build(devices: list[str], mode: str) -> RuleIndex:
    index = RuleIndex()
    if mode != "empty":
        for device_id in devices:
            for rule in device_rules(device_id):
                index.put(rule if mode == "rules" else replace(rule, enabled=False))
    for device_id in devices:  # warm the per-device maps, as a running broker has them
        index.lookup(device_id, "temperature")
    return index


def eval_loop(index: RuleIndex, stream: Stream, payloads: list[bytes]) -> tuple[int, int, int]:
    evaluate = index.evaluate
    fires = events = 0
    for device_id, values, ts in stream:
        decisions = evaluate(device_id, values, ts, ts + 40)
        if decisions:
            for d in decisions:
                fires += d.outcome is Outcome.FIRE
                events += d.event
    return len(stream), fires, events


def edge_loop(index: RuleIndex, stream: Stream, payloads: list[bytes]) -> tuple[int, int, int]:
    """The broker's in-process telemetry step that exists today: topic parse, payload decode,
    the Reading value the store and stats take, then the rules."""
    evaluate = index.evaluate
    parse = TOPICS.parse
    fires = events = 0
    for (device_id, _, arrival), payload in zip(stream, payloads, strict=True):
        topic = parse(TOPIC_OF[device_id])
        telemetry, _dropped = decode_telemetry(payload)
        ts = telemetry.ts if telemetry.ts is not None else arrival
        reading = Reading(topic.device_id, telemetry.seq, ts, arrival + 40, telemetry.readings)
        decisions = evaluate(reading.device_id, reading.values, reading.ts_ms, reading.received_ms)
        if decisions:
            for d in decisions:
                fires += d.outcome is Outcome.FIRE
                events += d.event
    return len(stream), fires, events


MODES = ("empty", "disabled", "rules")
Loop = Callable[[RuleIndex, Stream, list[bytes]], tuple[int, int, int]]


def best(
    loop: Loop,
    devices: list[str],
    warmup: Stream,
    stream: Stream,
    payloads: list[bytes],
    repeat: int,
) -> dict[str, tuple[float, int, int]]:
    """Best messages/s per mode over `repeat` rounds; modes interleaved so load drift is shared."""
    out: dict[str, tuple[float, int, int]] = {}
    for _ in range(repeat):
        for mode in MODES:
            index = build(devices, mode)
            eval_loop(index, warmup, [])  # past the start-up transients (first fan.off, ...)
            gc.collect()
            start = time.process_time()
            n, fires, events = loop(index, stream, payloads)
            rate = n / (time.process_time() - start)
            if rate > out.get(mode, (0.0, 0, 0))[0]:
                out[mode] = (rate, fires, events)
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-device", type=int, default=20, help="messages per device")
    parser.add_argument("--warmup", type=int, default=10, help="untimed messages per device first")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    print(
        f"machine: {os.cpu_count()} cpus ({cpu_model()}), Python {sys.version.split()[0]} "
        f"({platform.python_implementation()}), {platform.system()} {platform.machine()}"
    )
    devices = [f"dev-{i:05d}" for i in range(args.devices)]
    everything = make_stream(devices, args.warmup + args.per_device)
    warmup, stream = (
        everything[: args.warmup * len(devices)],
        everything[args.warmup * len(devices) :],
    )
    payloads = [encode(Telemetry(seq=i, readings=v, ts=ts)) for i, (_, v, ts) in enumerate(stream)]
    n_values = sum(len(v) for _, v, _ in stream)
    rules_per_device = len(device_rules("dev-x"))
    print(
        f"workload: {args.devices} devices x {rules_per_device} rules = "
        f"{args.devices * rules_per_device} rules; {len(stream)} messages "
        f"({n_values} reading values, {n_values // len(stream)} per message, 4 watched), "
        f"timed after {args.warmup} untimed messages per device; best of {args.repeat}"
    )

    TOPIC_OF.update({d: TOPICS.device(d, Channel.TELEMETRY) for d in devices})
    steps = (
        ("evaluator only", eval_loop),
        ("telemetry step: topic parse + decode + Reading + evaluate", edge_loop),
    )
    for title, loop in steps:
        print(f"\n{title}:")
        results = best(loop, devices, warmup, stream, payloads, args.repeat)
        for mode in MODES:
            rate, fires, events = results[mode]
            extra = f"  ({fires} fires, {events} history events)" if mode == "rules" else ""
            print(
                f"  {mode:9s} {rate:12,.0f} msg/s {rate * n_values / len(stream):12,.0f} "
                f"values/s{extra}"
            )
        rates = {mode: r[0] for mode, r in results.items()}
        print(f"  ratio rules/empty    = {rates['rules'] / rates['empty']:.2f}")
        print(f"  ratio rules/disabled = {rates['rules'] / rates['disabled']:.2f}")
        per_msg_us = 1e6 / rates["rules"] - 1e6 / rates["empty"]
        print(f"  rule cost per message: {per_msg_us:.2f} us")


if __name__ == "__main__":
    main()
