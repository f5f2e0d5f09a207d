"""What the rules service costs on the broker's ingest path: throughput with rules on vs off.

Two ingest stacks in one process (memory store, presence, statistics, event log,
command outbox with a link that drops what it is given), identical but for the
rules service: on = `RulesService` with 10,000 devices x 5 rules (bench/rules.py's
rule set and its noisy stream near the thresholds; fires go through the real
outbox), off = no rules service. Each round pushes the same pre-encoded QoS 1
telemetry through `IngestService.handle` and waits for every PUBACK callback (sent
after the batch commit; the rules run in that commit's bookkeeping). Rounds
alternate on/off; the ratio of the medians is the figure. Rates use this
process's CPU time. The rules' clock follows the readings' timestamps (the stream
is dated 2025-11-27 08:00 UTC, one message per device per minute), so cooldowns,
budgets and windows act as they would over the stream's 20 minutes.

    .venv/bin/python bench/rules_ingest.py [--devices 10000] [--per-round 3] [--rounds 6]
                                           [--warmup 10] [--fires outbox|stub]

`--fires stub` takes the fires without the outbox, to split the cost between the
rules themselves (evaluation, history lines) and the commands their fires send.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from planty_broker.config import CommandSettings, EventSettings, RuleSettings
from planty_broker.domain.commands import CommandRecord
from planty_broker.domain.models import DeviceRecord
from planty_broker.domain.rules.model import rule_to_dict
from planty_broker.domain.rules.records import StoredRule
from planty_broker.protocol import Channel, Telemetry, Topics, encode
from planty_broker.services.bus import Bus, ReadingStored
from planty_broker.services.commands.service import CommandService
from planty_broker.services.events import EventService
from planty_broker.services.ingest import IngestService
from planty_broker.services.presence import PresenceService
from planty_broker.services.registry import DeviceRegistry
from planty_broker.services.rules.service import RulesService
from planty_broker.services.stats.service import StatsService
from planty_broker.storage.memory import MemoryStore

_spec = importlib.util.spec_from_file_location("bench_rules", Path(__file__).with_name("rules.py"))
assert _spec is not None
assert _spec.loader is not None
bench_rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_rules)
TOPICS = Topics()


class DropLink:
    """An MQTT link that is always up and publishes into the void."""

    connected = True

    async def wait_connected(self) -> None:
        return None

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        return None


class StubCommands:
    """`--fires stub`: fires are taken without the outbox (the rules' own cost alone)."""

    async def submit(
        self,
        device_id: str,
        action: str,
        args: dict[str, Any] | None = None,
        *,
        ttl_s: float | None = None,
        origin: str = "api",
        command_id: str | None = None,
    ) -> CommandRecord:
        return CommandRecord(command_id or "c-stub", device_id, action, args or {}, 0, 0)


class Stack:
    """One ingest path; `rules` decides whether a rules service listens to it."""

    def __init__(self, devices: list[str], rules_on: bool, fires: str = "outbox") -> None:
        self.devices, self.rules_on, self.fires = devices, rules_on, fires
        self.now = 0
        self.rules: RulesService | None = None
        self._stops: list[Any] = []

    async def start(self) -> None:
        store = self.store = MemoryStore()
        await store.open()
        t0 = bench_rules.T0
        for d in self.devices:
            await store.add_device(
                DeviceRecord(d, t0, "h", sensors=("temperature", "soil_moisture", "light",
                             "humidity", "battery"), actuators=("pump", "lamp", "fan"))
            )  # fmt: skip
        bus = Bus()
        bus.subscribe(ReadingStored, self._tick)  # the rules' clock: the reading's own time
        registry = DeviceRegistry(store, bus, lambda t: t)
        await registry.load()
        presence = PresenceService(
            store, bus, registry, keepalive_s=60, default_interval_s=60, check_every_s=3600
        )
        await presence.start()
        stats = StatsService(store, bus, registry, presence)
        await stats.start()
        self.ingest = IngestService(
            store, bus, registry, presence, TOPICS, max_payload_bytes=65536, stats=stats
        )
        await self.ingest.start()
        events = EventService(store, bus, EventSettings())
        await events.start()
        commands = CommandService(
            store,
            bus,
            registry,
            presence,
            TOPICS,
            msgspec.convert(
                {"ping_interval_s": 0, "max_queue_per_device": 1000, "max_on_seconds": 3600},
                CommandSettings,
            ),
            stats=stats,
        )
        commands.attach(DropLink())
        await commands.start()
        self._stops = [presence.stop, stats.stop, self.ingest.stop, events.stop, commands.stop]
        if self.rules_on:
            rows = [
                StoredRule(r.id, rule_to_dict(r), "bench", t0, t0)
                for d in self.devices
                for r in bench_rules.device_rules(d)
            ]
            await store.save_rules(rows)
            settings = msgspec.convert({"timezone": "UTC"}, RuleSettings)
            self.rules = RulesService(
                store,
                bus,
                registry,
                settings,
                commands=commands if self.fires == "outbox" else StubCommands(),
                clock=lambda: self.now,
                notify=events.notify,
            )
            await self.rules.start()
            self._stops.insert(0, self.rules.stop)

    def _tick(self, event: ReadingStored) -> None:
        self.now = event.reading.ts_ms + 40

    async def stop(self) -> None:
        for stop in reversed(self._stops):
            await stop()

    async def round(self, messages: list[tuple[str, bytes]]) -> float:
        done = asyncio.Event()
        left = len(messages)

        def ack() -> None:
            nonlocal left
            left -= 1
            if not left:
                done.set()

        handle = self.ingest.handle
        started = time.process_time()
        for i, (topic, payload) in enumerate(messages):
            handle(topic, payload, False, ack)
            if i % 500 == 499:
                await asyncio.sleep(0)  # let the batch writer commit, like the MQTT link would
        await done.wait()
        if self.rules is not None and self.rules.engine._tasks:  # fires reach the outbox
            await asyncio.wait(set(self.rules.engine._tasks))
        return len(messages) / (time.process_time() - started)


async def run(args: argparse.Namespace) -> None:
    devices = [f"dev-{i:05d}" for i in range(args.devices)]
    per_stack = args.warmup + args.per_round * args.rounds  # each stack runs every round
    stream = bench_rules.make_stream(devices, per_stack)
    topic_of = {d: TOPICS.device(d, Channel.TELEMETRY) for d in devices}
    messages = [
        (topic_of[d], encode(Telemetry(seq=i, readings=v, ts=ts)))
        for i, (d, v, ts) in enumerate(stream)
    ]
    n_warm, n_round = args.warmup * len(devices), args.per_round * len(devices)
    on, off = Stack(devices, True, args.fires), Stack(devices, False)
    for s in (on, off):
        await s.start()
        await s.round(messages[:n_warm])
    rates: dict[str, list[float]] = {"on": [], "off": []}
    cursor = dict.fromkeys(("on", "off"), n_warm)
    for r in range(args.rounds):
        order = (("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on))
        for label, s in order:
            chunk = messages[cursor[label] : cursor[label] + n_round]
            cursor[label] += n_round
            gc.collect()
            rates[label].append(await s.round(chunk))
    assert on.rules is not None
    counts = dict(on.rules.engine.counts)
    live = len(on.rules)
    for s in (on, off):
        await s.stop()
    med_on, med_off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(
        f"ingest path (memory store, presence, stats, event log, outbox), {args.devices} devices,"
        f" {n_round} msgs per round, {len(rates['on'])} rounds each, alternating, fires to"
        f" {'the real outbox' if args.fires == 'outbox' else 'a stub (no command work)'}:"
    )
    print(f"  rules on ({live} rules): median {med_on:9,.0f} msg/s  rounds "
          f"{[round(x) for x in rates['on']]}")  # fmt: skip
    print(f"  rules off            : median {med_off:9,.0f} msg/s  rounds "
          f"{[round(x) for x in rates['off']]}")  # fmt: skip
    print(f"  ratio on/off: medians {med_on / med_off:.3f}")
    print(f"  rules cost per message: {1e6 / med_on - 1e6 / med_off:.2f} us")
    print(f"  decisions over the whole run: {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-round", type=int, default=3, help="messages per device per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed messages per device first")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--fires", choices=("outbox", "stub"), default="outbox", help="where fires are submitted"
    )
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} cpus ({bench_rules.cpu_model()}), Python "
        f"{sys.version.split()[0]} ({platform.python_implementation()}), {time.strftime('%F')}"
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
