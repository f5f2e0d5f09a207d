"""10,000 devices connected over TLS from several processes: memory per device and the fleet list.

    flock /work/coord/heavy.lock timeout 600 .venv/bin/python bench/fleet10k.py [--plaintext]

One `planty run` (SQLite). The file-descriptor limit is raised the documented way
(docs/operations.md: `LimitNOFILE=` for the systemd unit; here `setrlimit` to the hard
limit, inherited by the gateway and its Mosquitto). `--devices` are registered by bulk
import, then `--procs` worker processes each connect their share over TLS (or the
loopback plaintext listener with `--plaintext`, for the TLS cost), each device sending
its status and one reading, and stay connected. Printed: connect time, the gateway's and
Mosquitto's RSS idle and with every device online (KiB per device), and the fleet page
latency with the fleet online.

With `--minutes M` the fleet keeps running for M minutes: each device sends a QoS 1 reading
every `--interval` seconds (random phase) and answers the gateway's pings (`mqtt.ping_interval_s`,
60 s: the round trips fill the per-device latency windows). Every minute the gateway's and
Mosquitto's RSS, the load average and the readings stored are printed; at the end, the
readings PUBACKed to the devices against those stored (lost = acked and not stored).

    flock /work/coord/heavy.lock .venv/bin/python bench/fleet10k.py --minutes 60 --interval 30
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import resource
import shutil
import sqlite3
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway_proc import import_devices, rss_kib, running_gateway
from measure import free_port, machine_line, pct

from planty_broker.protocol import (
    Ack,
    Channel,
    ProtocolError,
    Status,
    Telemetry,
    Topics,
    decode_command,
    encode,
)
from planty_broker.transport.mqtt import LinkConfig, MessageHandler, MqttLink

TOPICS = Topics()


def _noop(_t: str, _p: bytes, _r: bool, ack: Callable[[], None]) -> None:
    ack()


def bench_link(
    device_id: str,
    token: str,
    port: int,
    tls: ssl.SSLContext | None,
    subs: list[tuple[str, int]] | None = None,
    handler: MessageHandler = _noop,
) -> MqttLink:
    """A bench device's link to the gateway's Mosquitto on localhost: its own credentials,
    keepalive 300 s, 10 QoS 1 messages in flight, a clean session, MQTT 3.1.1."""
    config = LinkConfig(
        host="localhost",
        port=port,
        client_id=device_id,
        username=device_id,
        password=token,
        tls=tls,
        keepalive_s=300,
        max_inflight=10,
        persistent_session=False,
        mqtt5=False,
    )
    return MqttLink(config, subs or [], handler)


async def connect_retrying(link: MqttLink, tries: int = 5) -> bool:
    """Connect, up to `tries` times 1 s apart (a burst of TLS handshakes gets some refused)."""
    for _attempt in range(tries):
        try:
            await link.connect()
            return True
        except Exception:
            await asyncio.sleep(1)
    return False


async def _worker_main(
    creds: list[tuple[str, str]],
    port: int,
    ca_pem: str | None,
    ready: Any,
    stop: Any,
    interval_s: float = 0.0,
) -> None:
    tls = None
    if ca_pem:
        tls = ssl.create_default_context(cadata=ca_pem)
    gate = asyncio.Semaphore(40)
    links: list[MqttLink] = []
    failed = 0
    counts = {"published": 0, "pings": 0}
    connected: list[tuple[str, MqttLink]] = []
    tasks: set[asyncio.Task[None]] = set()

    def answer(link_of: dict[str, MqttLink]) -> Any:
        def handler(topic: str, payload: bytes, _retain: bool, ack: Any) -> None:
            ack()
            device_id = topic.split("/")[-2]
            link = link_of.get(device_id)
            try:
                cmd = decode_command(payload)
            except ProtocolError:
                return
            if link is not None:
                counts["pings"] += 1
                reply = encode(Ack(id=cmd.id, ok=True))
                task = asyncio.ensure_future(
                    link.publish(TOPICS.device(device_id, Channel.ACK), reply)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        return handler

    async def report(device_id: str, link: MqttLink) -> None:
        await asyncio.sleep(random.uniform(0, interval_s))
        seq = 0
        topic = TOPICS.device(device_id, Channel.TELEMETRY)
        while not stop.is_set():
            seq += 1
            reading = Telemetry(seq=seq, readings={"temperature": 20 + random.random() * 5})
            await link.publish(topic, encode(reading))
            counts["published"] += 1
            await asyncio.sleep(interval_s)

    async def one(device_id: str, token: str) -> None:
        nonlocal failed
        async with gate:
            link_of: dict[str, MqttLink] = {}
            subs = [(TOPICS.device(device_id, Channel.CMD), 1)] if interval_s else []
            handler = answer(link_of) if interval_s else _noop
            link = bench_link(device_id, token, port, tls, subs, handler)
            link_of[device_id] = link
            if not await connect_retrying(link):
                failed += 1
                return
            links.append(link)
            connected.append((device_id, link))
            status = Status(online=True, fw="bench", sensors=("temperature",), interval_s=30)
            await link.publish(
                TOPICS.device(device_id, Channel.STATUS), encode(status), qos=1, retain=True
            )
            reading = Telemetry(seq=0, readings={"temperature": 21.5})
            await link.publish(TOPICS.device(device_id, Channel.TELEMETRY), encode(reading))

    await asyncio.gather(*(one(d, t) for d, t in creds))
    ready.put((len(links), failed))
    reporters = []
    if interval_s:
        reporters = [asyncio.ensure_future(report(d, link)) for d, link in connected]
    while not stop.is_set():
        await asyncio.sleep(0.5)
    for r in reporters:
        r.cancel()
    await asyncio.gather(*reporters, return_exceptions=True)
    for _ in range(600):  # every reading in flight gets its PUBACK
        if all(link.inflight == 0 for link in links):
            break
        await asyncio.sleep(0.1)
    pending = sum(link.inflight for link in links)
    ready.put((counts["published"], pending, counts["pings"]))
    await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


def _worker(
    creds: list[tuple[str, str]],
    port: int,
    ca_pem: str | None,
    ready: Any,
    stop: Any,
    interval_s: float = 0.0,
) -> None:
    asyncio.run(_worker_main(creds, port, ca_pem, ready, stop, interval_s))


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < need:
        raise SystemExit(f"the hard fd limit {hard} is below {need}: raise LimitNOFILE/ulimit -Hn")
    return hard


async def online_count(api: Any) -> int:
    r = await api.get("/api/v1/devices", params={"state": "online", "limit": 1})
    r.raise_for_status()
    return int(r.json()["count"])


async def fleet_page(api: Any) -> str:
    """Latency of the fleet page: 10 x (first page, online filter, search), limit 100."""
    times = []
    pages: list[dict[str, str | int]] = [
        {"limit": 100},
        {"state": "online", "limit": 100},
        {"q": "pot-0042"},
    ]
    for params in pages:
        for _ in range(10):
            s = time.perf_counter()
            r = await api.get("/api/v1/devices", params=params)
            r.raise_for_status()
            times.append((time.perf_counter() - s) * 1000)
    return (
        f"(limit 100 / online filter / search): p50 {pct(times, 0.5):.1f} ms, "
        f"p95 {pct(times, 0.95):.1f} ms, max {max(times):.1f} ms"
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--plaintext", action="store_true")
    p.add_argument("--settle-s", type=float, default=20.0)
    p.add_argument(
        "--minutes", type=float, default=0.0, help="keep the fleet reporting this long (0: no)"
    )
    p.add_argument("--interval", type=float, default=30.0, help="seconds between readings")
    args = p.parse_args()
    limit = raise_fd_limit(args.devices + 2000)
    print(machine_line())
    print(
        f"fd limit {limit}; {args.devices:,} devices from {args.procs} processes over "
        f"{'plaintext (loopback)' if args.plaintext else 'TLS'}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="planty-bench-10k-"))
    plain_port = free_port()
    env = {"PLANTY_MQTT_PLAINTEXT_LOOPBACK_PORT": str(plain_port)} if args.plaintext else {}
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    ready = ctx.Queue()
    procs: list[Any] = []
    try:
        async with running_gateway(workdir, env) as gw:
            api = gw.api
            mqtt = (await api.get("/api/v1/mqtt")).json()
            creds = await import_devices(api, [f"pot-{i:06d}" for i in range(args.devices)])
            await asyncio.sleep(3)  # the import's credential bookkeeping settles
            mosq = gw.mosquitto_pid()
            assert mosq is not None
            idle_gw, idle_mq = rss_kib(gw.pid), rss_kib(mosq)
            print(f"idle: gateway {idle_gw / 1024:.1f} MiB, Mosquitto {idle_mq / 1024:.1f} MiB")
            port = plain_port if args.plaintext else int(mqtt["port"])
            ca = None if args.plaintext else mqtt["ca_pem"]
            share = (len(creds) + args.procs - 1) // args.procs
            t0 = time.perf_counter()
            for k in range(args.procs):
                chunk = creds[k * share : (k + 1) * share]
                interval = args.interval if args.minutes else 0.0
                proc = ctx.Process(target=_worker, args=(chunk, port, ca, ready, stop, interval))
                proc.start()
                procs.append(proc)
            connected = failed = 0
            for _ in procs:
                c, f = await asyncio.to_thread(ready.get, True, 600)
                connected += c
                failed += f
            took = time.perf_counter() - t0
            print(
                f"connected {connected:,} ({failed} failed) in {took:.1f} s "
                f"({connected / took:,.0f}/s), each sent its status and a reading"
            )
            deadline = time.monotonic() + 120
            online = 0
            while time.monotonic() < deadline:
                online = await online_count(api)
                if online >= connected:
                    break
                await asyncio.sleep(1)
            print(f"online per the API: {online:,} after {time.perf_counter() - t0:.1f} s")
            await asyncio.sleep(args.settle_s)
            gw_rss, mq_rss = rss_kib(gw.pid), rss_kib(mosq)
            n = max(connected, 1)
            print(
                f"gateway RSS {gw_rss / 1024:.1f} MiB: +{(gw_rss - idle_gw) / n:.1f} KiB/device "
                f"over idle; Mosquitto RSS {mq_rss / 1024:.1f} MiB: "
                f"+{(mq_rss - idle_mq) / n:.1f} KiB/device"
            )
            print(f"fleet page with {online:,} online {await fleet_page(api)}")
            if args.minutes:
                await _run_for(args, gw, mosq, idle_gw, idle_mq, connected, ready, stop)
            stop.set()
            for proc in procs:
                await asyncio.to_thread(proc.join, 120)
    finally:
        stop.set()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        shutil.rmtree(workdir, ignore_errors=True)


def _stored(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        # seq 0 is each device's reading at connect; the reporting readings count from 1
        return int(conn.execute("SELECT count(*) FROM readings WHERE seq > 0").fetchone()[0])
    finally:
        conn.close()


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def _run_for(
    args: argparse.Namespace,
    gw: Any,
    mosq: int,
    idle_gw: int,
    idle_mq: int,
    connected: int,
    ready: Any,
    stop: Any,
) -> None:
    """The fleet reports for args.minutes; RSS, load and readings stored every minute."""
    db = gw.data_dir / "planty.sqlite3"
    start_stored = 0  # the devices began to report when they connected
    n = max(connected, 1)
    print(
        f"reporting for {args.minutes:g} min: a reading every {args.interval:g} s per device "
        f"({connected / args.interval:,.0f}/s), pings answered"
    )
    print("  min | gateway MiB (KiB/device over idle) | Mosquitto MiB (KiB/dev) | stored | load")
    t0 = time.monotonic()
    minute = 0
    while True:
        minute += 1
        await asyncio.sleep(max(0.0, t0 + 60 * minute - time.monotonic()))
        g, m = rss_kib(gw.pid), rss_kib(mosq)
        stored = await asyncio.to_thread(_stored, db)
        print(
            f"  {minute:3d} | {g / 1024:7.1f} ({(g - idle_gw) / n:5.2f}) | "
            f"{m / 1024:7.1f} ({(m - idle_mq) / n:5.2f}) | {stored - start_stored:,} | {_load()}",
            flush=True,
        )
        if minute >= args.minutes:
            break
    print(f"fleet page at the end, the fleet still reporting {await fleet_page(gw.api)}")
    stop.set()
    published = pending = pings = 0
    for _ in range(args.procs):
        pub, pend, png = await asyncio.to_thread(ready.get, True, 300)
        published, pending, pings = published + pub, pending + pend, pings + png
    acked = published - pending
    stored = start_stored
    for _ in range(60):  # what was PUBACKed is committed: the PUBACK follows the commit
        stored = await asyncio.to_thread(_stored, db)
        if stored - start_stored >= acked:
            break
        await asyncio.sleep(1)
    new = stored - start_stored
    print(
        f"readings: {published:,} published, {acked:,} PUBACKed ({pending} without PUBACK at "
        f"the end), {new:,} stored: lost {max(0, acked - new)}, stored beyond acked "
        f"{max(0, new - acked)}; pings answered by the devices: {pings:,}"
    )
    r = await gw.api.get("/api/v1/devices/pot-000001/stats", params={"window": "1h"})
    if r.is_success:
        print(f"one device's statistics (1 h window): {r.text[:600]}")
    g, m = rss_kib(gw.pid), rss_kib(mosq)
    print(
        f"after {args.minutes:g} min: gateway {g / 1024:.1f} MiB, "
        f"+{(g - idle_gw) / n:.2f} KiB/device over idle (aim < 8); "
        f"Mosquitto {m / 1024:.1f} MiB, +{(m - idle_mq) / n:.2f} KiB/device"
    )


if __name__ == "__main__":
    asyncio.run(main())
