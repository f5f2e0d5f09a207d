"""What do the outbox's send leases cost (issue 15)?

On a cluster every send first takes the command's lease in PostgreSQL
(`command_leases`, `FOR UPDATE SKIP LOCKED`), in one transaction per batch of what the
dispatcher is about to send. This measures, on a private PostgreSQL:

1. `lease_commands` alone: round trip for batches of 1, 16 and 128 ids (p50/p99 ms).
2. The whole outbox on PostgreSQL (submit -> queued row committed -> leased -> published ->
   acked at once by a loopback link -> acked row committed): commands/s and submit-to-acked
   p50/p99, with leases and without (the single gateway's path), alternated, in one run.

    .venv/bin/python bench/send_lease.py [--commands 2000] [--rounds 3] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from measure import machine_line, pct, private_postgres

REPO = Path(__file__).resolve().parents[1]



async def lease_round_trips(url: str, rounds: int) -> None:
    from planty_broker.domain import commands as cmds
    from planty_broker.domain.commands import CommandRecord
    from planty_broker.domain.models import DeviceRecord
    from planty_broker.storage.sql import SqlStore

    async with SqlStore(url) as store:
        await store.add_device(DeviceRecord("bench-lease", 0, ""))
        ids = [f"bl-{i}" for i in range(128)]
        await store.apply_command_changes(
            [cmds.queued(CommandRecord(c, "bench-lease", "read", {}, 0, 10**13)) for c in ids]
        )
        for size in (1, 16, 128):
            times: list[float] = []
            for i in range(200 * rounds):
                t0 = time.perf_counter()
                got = await store.lease_commands(ids[:size], "bench", i, i + 1)
                times.append((time.perf_counter() - t0) * 1000)
                assert len(got.granted) == size
            print(
                f"lease_commands, {size:>3} id(s): p50 {pct(times, 0.5):.2f} ms, "
                f"p99 {pct(times, 0.99):.2f} ms ({size / (pct(times, 0.5) / 1000):,.0f} ids/s)",
                flush=True,
            )


class LoopbackLink:
    """Publishes nowhere; the 'device' acks each command at once."""

    def __init__(self) -> None:
        self.service = None  # set once the service exists
        self.connected = True

    async def wait_connected(self) -> None:
        return None

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        from planty_broker.protocol import Topics, decode_command
        from planty_broker.services.bus import AckReceived
        from planty_broker.services.registry import now_ms

        cmd = decode_command(payload)
        device = Topics().parse(topic).device_id
        assert self.service is not None
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(
                self.service.handle_ack(AckReceived(device, cmd.id, True, {}, None, now_ms()))
            )
        )


async def outbox_run(
    url: str, n: int, concurrency: int, leased: bool, tag: str
) -> tuple[float, list[float]]:
    import msgspec

    from planty_broker.config import CommandSettings
    from planty_broker.protocol import Status, Topics
    from planty_broker.services.bus import Bus
    from planty_broker.services.commands.service import CommandService
    from planty_broker.services.presence import PresenceService
    from planty_broker.services.registry import DeviceRegistry, now_ms
    from planty_broker.storage.sql import SqlStore

    async with SqlStore(url) as store:
        bus = Bus()
        registry = DeviceRegistry(store, bus, lambda t: "h")
        await registry.load()
        presence = PresenceService(
            store, bus, registry, keepalive_s=60, default_interval_s=60, check_every_s=3600
        )
        await presence.start()
        devices = [f"bench-{tag}-{i}" for i in range(concurrency)]
        for d in devices:
            await registry.add(d)
            await registry.note_status(d, Status(online=True, actuators=("pump",)))
            presence.on_status(d, True, 60, now_ms())
        settings = msgspec.convert(
            {"ping_interval_s": 0, "dispatch_rate_per_s": 100_000, "dispatch_burst": 1000,
             "max_queue_per_device": 1000},
            CommandSettings,
        )  # fmt: skip
        service = CommandService(
            store, bus, registry, presence, Topics(), settings,
            lease_owner=f"bench/{tag}" if leased else None,
        )  # fmt: skip
        link = LoopbackLink()
        link.service = service  # type: ignore[assignment]
        service.attach(link)  # type: ignore[arg-type]
        await service.start()
        latencies: list[float] = []

        async def one_device(d: str, count: int) -> None:
            for _ in range(count):
                t0 = time.perf_counter()
                rec = await service.submit(d, "pump.on", {"seconds": 1})
                final = await service.wait(rec.id, 30)
                assert final.state.value == "acked", final
                latencies.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one_device(d, n // concurrency) for d in devices))
        elapsed = time.perf_counter() - t0
        await service.stop()
        await presence.stop()
        return len(latencies) / elapsed, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commands", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--concurrency", type=int, default=50, help="devices, one command in flight each"
    )
    args = ap.parse_args()
    print(machine_line(), flush=True)
    with private_postgres("planty-sendlease-") as url:
        asyncio.run(lease_round_trips(url, args.rounds))
        for r in range(args.rounds):
            for leased in (False, True):
                rate, lat = asyncio.run(
                    outbox_run(url, args.commands, args.concurrency, leased, f"{r}{int(leased)}")
                )
                kind = "leased  " if leased else "no lease"
                print(
                    f"round {r + 1} {kind}: {rate:,.0f} commands/s, "
                    f"submit->acked p50 {pct(lat, 0.5):.1f} ms p99 {pct(lat, 0.99):.1f} ms",
                    flush=True,
                )

if __name__ == "__main__":
    main()
