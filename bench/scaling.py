"""The scaling curve: 100, 1,000 and 10,000 devices over TLS, throughput, latency and memory.

    flock /work/coord/heavy.lock .venv/bin/python bench/scaling.py [--sizes 100,1000,10000]

For each size a fresh `planty run` (SQLite, synchronous=full): the devices are registered by
bulk import, connected over TLS from `--procs` worker processes (the file-descriptor limit
raised to the hard limit), then two phases:

  1. paced, for each of `--paced-rates`: the fleet publishes that many QoS 1 readings a
     second in all (each device every N / rate seconds, random phase) for `--paced-s` s;
  2. saturation: `--burst` readings in all (burst / N each), every device as fast as its
     10 in-flight PUBACKs allow. A device's PUBACK comes from Mosquitto, which queues
     what the gateway has not taken yet, so the burst lands in that queue within seconds
     and its latencies are the queue's drain time (about burst / rate), not a service time;
     its figure is the rate the gateway stores at.

Each reading carries its publish time; a thread polls the SQLite file every 5 ms (as
bench/ingest.py does), so "latency" is publish -> visible in the store.
Printed per size: readings stored a second (paced: the offered rate kept up or not;
saturation: first to last stored), p50 / p99 / max latency, readings PUBACKed against
stored (lost), the gateway's and Mosquitto's RSS over idle per device (connected; after
both phases), the fleet page latency with the fleet connected; then the table and the
growth ratios from each size to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import os
import random
import shutil
import sqlite3
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet10k import bench_link, connect_retrying, raise_fd_limit
from gateway_proc import import_devices, rss_kib, running_gateway
from measure import machine_line, pct

from planty_broker.protocol import Channel, Telemetry, Topics, encode
from planty_broker.transport.mqtt import MqttLink

TOPICS = Topics()


def _reading(seq: int) -> bytes:
    return encode(
        Telemetry(
            seq=seq,
            ts=time.time_ns() // 1_000_000,
            readings={"temperature": 21.5, "soil_moisture": 0.43, "light": 812},
        )
    )


async def _worker_main(
    creds: list[tuple[str, str]], port: int, ca_pem: str, cmds: Any, out: Any
) -> None:
    tls = ssl.create_default_context(cadata=ca_pem)
    gate = asyncio.Semaphore(40)
    links: list[tuple[str, MqttLink]] = []
    failed = 0
    seqs: dict[str, int] = {}

    async def connect(device_id: str, token: str) -> None:
        nonlocal failed
        async with gate:
            link = bench_link(device_id, token, port, tls)
            if not await connect_retrying(link):
                failed += 1
                return
            links.append((device_id, link))
            seqs[device_id] = 0

    async def publish(device_id: str, link: MqttLink) -> None:
        seqs[device_id] += 1
        await link.publish(TOPICS.device(device_id, Channel.TELEMETRY), _reading(seqs[device_id]))

    async def drain() -> int:
        for _ in range(1200):  # every reading in flight gets its PUBACK (up to 2 min)
            if all(link.inflight == 0 for _d, link in links):
                break
            await asyncio.sleep(0.1)
        return sum(link.inflight for _d, link in links)

    async def paced(device_id: str, link: MqttLink, every_s: float, until: float) -> int:
        sent = 0
        next_at = time.monotonic() + random.uniform(0, every_s)
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await publish(device_id, link)
            sent += 1
            next_at += every_s
        return sent

    async def burst(device_id: str, link: MqttLink, n: int) -> int:
        for _ in range(n):
            await publish(device_id, link)
        return n

    await asyncio.gather(*(connect(d, t) for d, t in creds))
    out.put((len(links), failed))
    while True:
        cmd = await asyncio.to_thread(cmds.get)
        if cmd[0] == "paced":
            _, every_s, seconds = cmd
            until = time.monotonic() + seconds
            sent = await asyncio.gather(*(paced(d, lk, every_s, until) for d, lk in links))
        elif cmd[0] == "burst":
            sent = await asyncio.gather(*(burst(d, lk, cmd[1]) for d, lk in links))
        else:
            break
        pending = await drain()
        out.put((sum(sent), pending))
    await asyncio.gather(*(link.close() for _d, link in links), return_exceptions=True)


def _worker(creds: list[tuple[str, str]], port: int, ca_pem: str, cmds: Any, out: Any) -> None:
    asyncio.run(_worker_main(creds, port, ca_pem, cmds, out))


@dataclass
class Phase:
    published: int = 0
    acked: int = 0
    stored: int = 0
    seconds: float = 0.0  # first to last stored
    gw_cpu_s: float = 0.0  # the gateway's CPU seconds over the phase (all threads)
    mq_cpu_s: float = 0.0  # Mosquitto's
    lat: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else float("nan")

    def cpu_us(self, cpu_s: float) -> float:
        return cpu_s / self.stored * 1e6 if self.stored else float("nan")


@dataclass
class Size:
    devices: int
    connected: int = 0
    connect_s: float = 0.0
    idle_gw: int = 0
    idle_mq: int = 0
    conn_gw: int = 0
    conn_mq: int = 0
    end_gw: int = 0
    end_mq: int = 0
    hwm_gw: int = 0
    page_ms: list[float] = field(default_factory=list)
    paced: list[tuple[float, Phase]] = field(default_factory=list)
    paced_gw: int = 0  # RSS after the paced phases
    paced_mq: int = 0
    sat: Phase = field(default_factory=Phase)


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split(":")[1].split()[0])
    return 0


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _phase(
    watcher: PhaseWatcher,
    cmd_qs: list[Any],
    out: Any,
    cmd: tuple[Any, ...],
    pids: tuple[int, int],
) -> Phase:
    cpu0 = [_cpu_s(pid) for pid in pids]
    watcher.mark()
    count0, lat0 = watcher.count, len(watcher.latencies_ms)
    for q in cmd_qs:
        q.put(cmd)
    published = pending = 0
    for _ in cmd_qs:
        sent, pend = await asyncio.to_thread(out.get, True, 900)
        published, pending = published + sent, pending + pend
    acked = published - pending
    deadline = time.monotonic() + 60  # what was PUBACKed is committed: PUBACK follows commit
    while watcher.count - count0 < acked and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    stored = watcher.count - count0
    lat = watcher.latencies_ms[lat0:]
    seconds = watcher.last - watcher.phase_first if stored else 0.0
    gw_cpu, mq_cpu = (_cpu_s(pid) - c0 for pid, c0 in zip(pids, cpu0, strict=True))
    return Phase(published, acked, stored, seconds, gw_cpu, mq_cpu, lat)


class PhaseWatcher(threading.Thread):
    """Polls the gateway's SQLite file every 5 ms: when each reading became visible (as the
    `StoredWatcher` of bench/ingest.py), and when the current phase's first one was."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db, self.stop = db, threading.Event()
        self.latencies_ms: list[float] = []
        self.count = 0
        self.phase_first = self.last = 0.0
        self._phase_count = 0

    def mark(self) -> None:
        self._phase_count = self.count
        self.phase_first = 0.0

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        last_rowid = 0
        while not self.stop.is_set():
            now_ms = time.time_ns() / 1e6
            rows = conn.execute(
                "SELECT rowid, ts_ms FROM readings WHERE rowid > ? ORDER BY rowid", (last_rowid,)
            ).fetchall()
            if rows:
                t = time.perf_counter()
                if self.count == self._phase_count:
                    self.phase_first = t
                self.last = t
                self.count += len(rows)
                last_rowid = rows[-1][0]
                self.latencies_ms.extend(now_ms - ts for _r, ts in rows)
            time.sleep(0.005)
        conn.close()


async def one_size(args: argparse.Namespace, n: int) -> Size:
    res = Size(n)
    workdir = Path(tempfile.mkdtemp(prefix=f"planty-bench-scale-{n}-"))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs: list[Any] = []
    cmd_qs: list[Any] = []
    try:
        async with running_gateway(workdir) as gw:
            api = gw.api
            mqtt = (await api.get("/api/v1/mqtt")).json()
            creds = await import_devices(api, [f"pot-{i:06d}" for i in range(n)])
            await asyncio.sleep(3)  # the import's credential bookkeeping settles
            mosq = gw.mosquitto_pid()
            assert mosq is not None
            res.idle_gw, res.idle_mq = rss_kib(gw.pid), rss_kib(mosq)
            watcher = PhaseWatcher(gw.data_dir / "planty.sqlite3")
            watcher.start()
            nprocs = max(1, min(args.procs, n // 100))
            share = (n + nprocs - 1) // nprocs
            t0 = time.perf_counter()
            for k in range(nprocs):
                q = ctx.Queue()
                chunk = creds[k * share : (k + 1) * share]
                proc = ctx.Process(
                    target=_worker, args=(chunk, int(mqtt["port"]), mqtt["ca_pem"], q, out)
                )
                proc.start()
                procs.append(proc)
                cmd_qs.append(q)
            failed = 0
            for _ in procs:
                c, f = await asyncio.to_thread(out.get, True, 900)
                res.connected += c
                failed += f
            res.connect_s = time.perf_counter() - t0
            print(
                f"  {n:,} devices: {res.connected:,} connected over TLS ({failed} failed) in "
                f"{res.connect_s:.1f} s from {nprocs} processes",
                flush=True,
            )
            await asyncio.sleep(args.settle_s)
            res.conn_gw, res.conn_mq = rss_kib(gw.pid), rss_kib(mosq)
            for rate in args.paced_rates:
                every_s = res.connected / rate
                cmd = ("paced", every_s, args.paced_s)
                phase = await _phase(watcher, cmd_qs, out, cmd, (gw.pid, mosq))
                res.paced.append((rate, phase))
                _print_phase(f"paced {rate:,.0f}/s offered", phase)
            res.paced_gw, res.paced_mq = rss_kib(gw.pid), rss_kib(mosq)
            per = max(1, args.burst // max(res.connected, 1))
            res.sat = await _phase(watcher, cmd_qs, out, ("burst", per), (gw.pid, mosq))
            _print_phase(f"saturation, {per} each", res.sat)
            await asyncio.sleep(args.settle_s)
            res.end_gw, res.end_mq = rss_kib(gw.pid), rss_kib(mosq)
            res.hwm_gw = _hwm_kib(gw.pid)
            pages: list[dict[str, str | int]] = [
                {"limit": 100},
                {"state": "online", "limit": 100},
                {"q": "pot-0000"},
            ]
            for params in pages:
                for _ in range(10):
                    s = time.perf_counter()
                    r = await api.get("/api/v1/devices", params=params)
                    r.raise_for_status()
                    res.page_ms.append((time.perf_counter() - s) * 1000)
            m = max(res.connected, 1)
            print(
                f"    RSS over idle (MiB; KiB/device): gateway connected "
                f"{_grown(res.idle_gw, res.conn_gw, m)}, after paced "
                f"{_grown(res.idle_gw, res.paced_gw, m)}, after the burst "
                f"{_grown(res.idle_gw, res.end_gw, m)} (idle {res.idle_gw / 1024:.1f} MiB, "
                f"peak {res.hwm_gw / 1024:.1f}); Mosquitto connected "
                f"{_grown(res.idle_mq, res.conn_mq, m)}, after paced "
                f"{_grown(res.idle_mq, res.paced_mq, m)}, after the burst "
                f"{_grown(res.idle_mq, res.end_mq, m)} (idle {res.idle_mq / 1024:.1f} MiB); "
                f"fleet page p50 {pct(res.page_ms, 0.5):.1f} ms, max {max(res.page_ms):.1f} ms; "
                f"load {_load()}",
                flush=True,
            )
            for q in cmd_qs:
                q.put(("stop",))
            for proc in procs:
                await asyncio.to_thread(proc.join, 120)
            watcher.stop.set()
            watcher.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
    return res


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _print_phase(name: str, p: Phase) -> None:
    print(
        f"    {name}: {p.published:,} published, {p.acked:,} PUBACKed, {p.stored:,} stored "
        f"(lost {max(0, p.acked - p.stored)}) at {p.rate:,.0f}/s; publish -> stored p50 "
        f"{pct(p.lat, 0.5):.0f} ms, p99 {pct(p.lat, 0.99):.0f} ms, "
        f"max {max(p.lat) if p.lat else float('nan'):.0f} ms; CPU per reading: gateway "
        f"{p.cpu_us(p.gw_cpu_s):.0f} us, Mosquitto {p.cpu_us(p.mq_cpu_s):.0f} us",
        flush=True,
    )


def _grown(idle: int, now: int, n: int) -> str:
    return f"{(now - idle) / 1024:.1f}; {(now - idle) / n:.2f}"


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}x" if a > 0 else "-"


def _lost(p: Phase) -> int:
    return max(0, p.acked - p.stored)


def report(sizes: list[Size]) -> None:
    rates = [rate for rate, _p in sizes[0].paced]
    print()
    head = ["devices", "connect s"]
    head += [f"paced {r:,.0f}/s: stored/s, p50 / p99 ms, gateway CPU us/reading" for r in rates]
    head += ["saturation stored/s (burst drain p50 / p99 ms), gateway CPU us/reading", "lost"]
    head += ["gateway RSS over idle, MiB; KiB/device: connected / after paced / after burst"]
    head += ["Mosquitto, the same", "fleet page p50 ms"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for s in sizes:
        m = max(s.connected, 1)
        cells = [f"{s.devices:,}", f"{s.connect_s:.1f}"]
        for _r, p in s.paced:
            cells.append(
                f"{p.rate:,.0f}, {pct(p.lat, 0.5):.0f} / {pct(p.lat, 0.99):.0f}, "
                f"{p.cpu_us(p.gw_cpu_s):.0f}"
            )
        sat = s.sat
        cells.append(
            f"{sat.rate:,.0f} ({pct(sat.lat, 0.5):.0f} / {pct(sat.lat, 0.99):.0f}), "
            f"{sat.cpu_us(sat.gw_cpu_s):.0f}"
        )
        cells.append(str(sum(_lost(p) for _r, p in s.paced) + _lost(sat)))
        cells.append(
            f"{_grown(s.idle_gw, s.conn_gw, m)} / {_grown(s.idle_gw, s.paced_gw, m)} / "
            f"{_grown(s.idle_gw, s.end_gw, m)}"
        )
        cells.append(
            f"{_grown(s.idle_mq, s.conn_mq, m)} / {_grown(s.idle_mq, s.paced_mq, m)} / "
            f"{_grown(s.idle_mq, s.end_mq, m)}"
        )
        cells.append(f"{pct(s.page_ms, 0.5):.1f}")
        print("| " + " | ".join(cells) + " |")
    print()
    print("growth from one size to the next:")
    for a, b in itertools.pairwise(sizes):
        p99s = ", ".join(
            f"paced {r:,.0f}/s p99 {_ratio(pct(pa.lat, 0.99), pct(pb.lat, 0.99))}"
            for (r, pa), (_r, pb) in zip(a.paced, b.paced, strict=True)
        )
        print(
            f"  {a.devices:,} -> {b.devices:,} ({b.devices / a.devices:g}x devices): "
            f"saturation stored/s {_ratio(a.sat.rate, b.sat.rate)}, {p99s}, "
            f"gateway RSS over idle connected "
            f"{_ratio(a.conn_gw - a.idle_gw, b.conn_gw - b.idle_gw)}, "
            f"after paced {_ratio(a.paced_gw - a.idle_gw, b.paced_gw - b.idle_gw)}, "
            f"Mosquitto RSS over idle connected "
            f"{_ratio(a.conn_mq - a.idle_mq, b.conn_mq - b.idle_mq)}, "
            f"after paced {_ratio(a.paced_mq - a.idle_mq, b.paced_mq - b.idle_mq)}, "
            f"connect time {_ratio(a.connect_s, b.connect_s)}"
        )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--procs", type=int, default=4, help="worker processes (at most 1 per 100)")
    p.add_argument("--paced-rates", default="1000,5000", help="readings/s, whole fleet")
    p.add_argument("--paced-s", type=float, default=30.0)
    p.add_argument("--burst", type=int, default=100_000, help="readings in the saturation run")
    p.add_argument("--settle-s", type=float, default=5.0)
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    args.paced_rates = [float(x) for x in args.paced_rates.split(",")]
    limit = raise_fd_limit(max(sizes) + 2000)
    print(machine_line())
    print(
        f"fd limit {limit}; sizes {sizes}; paced {args.paced_rates} /s, "
        f"{args.paced_s:g} s each, "
        f"saturation {args.burst:,} readings; QoS 1, 10 in flight per device, TLS"
    )
    results = []
    for n in sizes:
        results.append(await one_size(args, n))
    report(results)
    print(f"load average at the end: {_load()}")


if __name__ == "__main__":
    asyncio.run(main())
