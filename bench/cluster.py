"""Scale-out benchmark (issue 15): throughput and publish -> stored latency with 1, 2 and 3
gateway instances on a 3-node RabbitMQ cluster and one PostgreSQL (bin/cluster's set-up).

For each instance count: N simulated devices (TLS, QoS 1, at most 20 unacked each, their
own clock in `ts`) publish as fast as the PUBACKs allow for S seconds. Prints PUBACKed
and stored readings/s, publish -> stored latency percentiles, and CPU seconds per stored
reading of the gateway instances and of the RabbitMQ nodes (from /proc, over the run).

"Stored" is the row's insert time inside its batch transaction (a bench-only column with
`DEFAULT clock_timestamp()` added to this throw-away database), minus the device's `ts`:
both clocks are this machine's. The load generator, the three RabbitMQ nodes, PostgreSQL
and the gateways share the machine's cores, so this measures the set-up on one host,
not what more hosts would give; CPU per reading is the figure that scales on paper.

    .venv/bin/python bench/cluster.py --devices 100 --seconds 20 --instances 1,2,3
    .venv/bin/python bench/cluster.py --devices 300 --seconds 30 --interval 1   # paced
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import time
from pathlib import Path

import psycopg
from measure import cluster_script, machine_line

from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import DeviceProfile
from planty_broker.simulator.provision import provision_devices

REPO = Path(__file__).resolve().parents[1]



def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


async def one_round(  # type: ignore[no-untyped-def]
    cl, cluster, n: int, devices: int, seconds: float, interval_s: float
) -> dict[str, float]:
    gws = cluster.gateways
    for gw in gws[:n]:
        if not gw.alive():
            cl.gateway_start(gw)
    for gw in gws[n:]:
        if gw.alive():
            cl.gateway_kill(gw, 15)
    cluster.save()  # the restarted instances' pids: bin/cluster stop reads them from the state
    for gw in gws[:n]:
        await cl.wait_healthy(gw)
    await cl.leader(gws[:n])
    pg = cl._pg_conninfo(cluster.pg_url)
    ids = [f"bench-{i:04d}" for i in range(devices)]
    creds = await provision_devices(
        gws[0].url + "/api/v1", cluster.token, ids, concurrency=4, on_conflict="replace"
    )
    ports = cluster.spec.mqtts_ports()
    alternates = tuple(("localhost", p) for p in ports)
    from dataclasses import replace

    creds = [
        replace(c, host="localhost", port=ports[i % len(ports)], alternates=alternates)
        for i, c in enumerate(creds)
    ]
    profile = DeviceProfile(interval_s=interval_s or 3600, ota=False, max_inflight=20, send_ts=True)
    gate = asyncio.Semaphore(20)
    rng = random.Random(5)
    fleet = [SimDevice(c, profile, connect_gate=gate, seed=rng.randrange(1 << 30)) for c in creds]
    for d in fleet:
        await d.start()
    await asyncio.gather(*(d.wait_online(60) for d in fleet))
    async with await psycopg.AsyncConnection.connect(pg, autocommit=True) as conn:
        cur = await conn.execute("SELECT coalesce(max(id), 0) FROM readings")
        start_id = (await cur.fetchone())[0]  # type: ignore[index]
    pids_gw = [g.pid for g in gws[:n]]
    pids_mq = [p for p in (node.beam_pid() for node in cluster.nodes) if p]
    cpu0_gw = sum(cpu_seconds(p) for p in pids_gw)
    cpu0_mq = sum(cpu_seconds(p) for p in pids_mq)
    acked0 = sum(d.stats.telemetry_acked for d in fleet)
    t0 = time.monotonic()
    stop = time.monotonic() + seconds

    async def pump(d: SimDevice) -> None:
        while time.monotonic() < stop:
            await d.burst(10)

    if interval_s:  # paced: every device on its own interval (as a fleet does)
        await asyncio.sleep(seconds)
        for d in fleet:
            d.go_silent()
    else:  # saturation: as fast as the PUBACKs allow
        await asyncio.gather(*(pump(d) for d in fleet))
    await asyncio.gather(*(d.wait_acked(30) for d in fleet))
    elapsed = time.monotonic() - t0
    acked = sum(d.stats.telemetry_acked for d in fleet) - acked0
    # wait until the queues are drained (the count stops moving for 3 s)
    last, still = -1, time.monotonic()
    async with await psycopg.AsyncConnection.connect(pg, autocommit=True) as conn:
        while time.monotonic() - still < 3:
            cur = await conn.execute("SELECT count(*) FROM readings WHERE id > %s", (start_id,))
            now = (await cur.fetchone())[0]  # type: ignore[index]
            if now != last:
                last, still = now, time.monotonic()
            await asyncio.sleep(0.5)
        drained = time.monotonic() - t0
        cur = await conn.execute(
            "SELECT count(*), "
            " percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY "
            "  extract(epoch FROM stored_at) * 1000 - ts_ms), "
            " extract(epoch FROM max(stored_at) - min(stored_at)) "
            "FROM readings WHERE id > %s",
            (start_id,),
        )
        stored, (p50, p99), span = await cur.fetchone()  # type: ignore[misc]
    cpu_gw = sum(cpu_seconds(p) for p in pids_gw) - cpu0_gw
    cpu_mq = sum(cpu_seconds(p) for p in pids_mq) - cpu0_mq
    for d in fleet:
        await d.stop()
    return {
        "instances": n,
        "acked": acked,
        "stored": stored,
        "puback_per_s": acked / elapsed,
        "stored_per_s": stored / max(span or drained, 1e-3),
        "p50_ms": p50,
        "p99_ms": p99,
        "gw_cpu_ms_per_reading": 1000 * cpu_gw / max(stored, 1),
        "mq_cpu_ms_per_reading": 1000 * cpu_mq / max(stored, 1),
    }


async def main_async(devices: int, seconds: float, counts: list[int], interval_s: float) -> None:
    cl = cluster_script()
    print(machine_line(), flush=True)
    owned = cl.Cluster.load(cl.base_dir()) is None
    cluster = await cl.start(max(counts)) if owned else cl.Cluster.load(cl.base_dir())
    try:
        pg = cl._pg_conninfo(cluster.pg_url)
        async with await psycopg.AsyncConnection.connect(pg, autocommit=True) as conn:
            await conn.execute(
                "ALTER TABLE readings ADD COLUMN IF NOT EXISTS stored_at timestamptz "
                "DEFAULT clock_timestamp()"
            )
        rows = []
        for n in counts:
            r = await one_round(cl, cluster, n, devices, seconds, interval_s)
            rows.append(r)
            load = f"every {interval_s:g} s" if interval_s else "saturating"
            print(
                f"instances={n} devices={devices} {load}: PUBACKed {r['puback_per_s']:,.0f}/s, "
                f"stored {r['stored_per_s']:,.0f}/s ({r['stored']:,} of {r['acked']:,} acked), "
                f"publish->stored p50 {r['p50_ms']:,.0f} ms p99 {r['p99_ms']:,.0f} ms, "
                f"CPU per reading: gateways {r['gw_cpu_ms_per_reading']:.3f} ms, "
                f"RabbitMQ {r['mq_cpu_ms_per_reading']:.3f} ms",
                flush=True,
            )
    finally:
        if owned:
            await asyncio.to_thread(cl.stop)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--instances", default="1,2,3")
    ap.add_argument(
        "--interval", type=float, default=0.0, help="paced: one reading every N s (0: saturate)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("gmqtt", "asyncio", "planty_broker.simulator"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    counts = [int(x) for x in args.instances.split(",")]
    asyncio.run(main_async(args.devices, args.seconds, counts, args.interval))


if __name__ == "__main__":
    main()
