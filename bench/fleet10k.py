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
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import shutil
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway_proc import import_devices, rss_kib, running_gateway
from measure import free_port, machine_line, pct

from planty_broker.protocol import Channel, Status, Telemetry, Topics, encode
from planty_broker.transport.mqtt import LinkConfig, MqttLink

TOPICS = Topics()


async def _noop(_t: str, _p: bytes, _r: bool) -> None:
    return None


async def _worker_main(
    creds: list[tuple[str, str]], port: int, ca_pem: str | None, ready: Any, stop: Any
) -> None:
    tls = None
    if ca_pem:
        tls = ssl.create_default_context(cadata=ca_pem)
    gate = asyncio.Semaphore(40)
    links: list[MqttLink] = []
    failed = 0

    async def one(device_id: str, token: str) -> None:
        nonlocal failed
        async with gate:
            link = MqttLink(
                LinkConfig(
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
                ),
                [],
                _noop,
            )
            for _attempt in range(5):
                try:
                    await link.connect()
                    break
                except Exception:
                    await asyncio.sleep(1)
            else:
                failed += 1
                return
            links.append(link)
            status = Status(online=True, fw="bench", sensors=("temperature",), interval_s=30)
            await link.publish(
                TOPICS.device(device_id, Channel.STATUS), encode(status), qos=1, retain=True
            )
            reading = Telemetry(seq=0, readings={"temperature": 21.5})
            await link.publish(TOPICS.device(device_id, Channel.TELEMETRY), encode(reading))

    await asyncio.gather(*(one(d, t) for d, t in creds))
    ready.put((len(links), failed))
    while not stop.is_set():
        await asyncio.sleep(0.5)
    await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


def _worker(
    creds: list[tuple[str, str]], port: int, ca_pem: str | None, ready: Any, stop: Any
) -> None:
    asyncio.run(_worker_main(creds, port, ca_pem, ready, stop))


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


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--plaintext", action="store_true")
    p.add_argument("--settle-s", type=float, default=20.0)
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
                proc = ctx.Process(target=_worker, args=(chunk, port, ca, ready, stop))
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
            times = []
            for params in ({"limit": 100}, {"state": "online", "limit": 100}, {"q": "pot-0042"}):
                for _ in range(10):
                    s = time.perf_counter()
                    r = await api.get("/api/v1/devices", params=params)
                    r.raise_for_status()
                    times.append((time.perf_counter() - s) * 1000)
            print(
                f"fleet page with {online:,} online (limit 100 / online filter / search): "
                f"p50 {pct(times, 0.5):.1f} ms, p95 {pct(times, 0.95):.1f} ms, "
                f"max {max(times):.1f} ms"
            )
            stop.set()
            for proc in procs:
                await asyncio.to_thread(proc.join, 60)
    finally:
        stop.set()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
