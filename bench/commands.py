"""Command benchmark: API -> device ack -> final state through the API, against a bare baseline.

One run, one supervised Mosquitto (TLS), one simulated fleet (default 1,000 devices):
  1. gateway round trip at each rate (default 100 and 1,000 commands/s): POST
     /devices/{id}/commands with `wait_s`, which answers once the command is final (its ack
     committed), so the measured time is API call -> publish -> device ack -> final state
     visible through the API. Open loop: requests start on schedule, whatever the latency.
  2. outbox throughput: N commands submitted at once (HTTP concurrency 64), time until every
     one is final (acked) in the store.
  3. bare baseline: the gateway is killed (kill -9: Mosquitto and the fleet stay up), and a
     bare gmqtt client logged in as the gateway's account publishes the same `cmd` to the
     same devices and times the `ack`, at the same rates: MQTT publish -> ack, no logic.
The gateway runs in its own process (`planty run`), the fleet and the load in this one.

    .venv/bin/python bench/commands.py [--devices 1000] [--rates 100,1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from gmqtt import Client
from measure import free_port, machine_line, pct

from planty_broker.mqttserver.process import mosquitto_directory
from planty_broker.protocol import Channel, Command, Topics, decode_ack, encode
from planty_broker.simulator.fleet import Fleet
from planty_broker.simulator.profile import DeviceCredentials, DeviceProfile

REPO = Path(__file__).resolve().parents[1]
PLANTY = Path(sys.executable).parent / "planty"
TOPICS = Topics()
ADMIN = "bench-commands-admin-token-" + os.urandom(8).hex()


def summary(name: str, lat_ms: list[float], sent: int, elapsed: float, failed: int) -> str:
    return (
        f"{name:<34} {len(lat_ms) / elapsed:7.1f}/s done ({sent} sent, {failed} not acked)  "
        f"p50 {pct(lat_ms, 0.50):6.2f}  p95 {pct(lat_ms, 0.95):6.2f}  "
        f"p99 {pct(lat_ms, 0.99):6.2f}  max {max(lat_ms, default=float('nan')):7.2f} ms"
    )


# ---------------------------------------------------------------- the gateway process


class GatewayProc:
    def __init__(self, data_dir: Path, profile: str | None = None, sync: str = "full") -> None:
        self.data_dir = data_dir
        self.profile = profile
        self.sync = sync
        self.api_port, self.mqtt_port, self.internal_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    async def start(self) -> None:
        env = {
            **os.environ,
            "PLANTY_ADMIN_TOKEN": ADMIN,
            "PLANTY_MQTT_INTERNAL_PORT": str(self.internal_port),
            "PLANTY_MQTT_PUBLIC_HOST": "localhost",
            "PLANTY_COMMANDS_PING_INTERVAL_S": "0",  # only the measured commands on the wire
            "PLANTY_COMMANDS_DISPATCH_RATE_PER_S": "20000",  # pacing is not what we measure
            "PLANTY_COMMANDS_DISPATCH_BURST": "2000",
            "PLANTY_LOG_LEVEL": "warning",
            "PLANTY_STORE_SQLITE_SYNCHRONOUS": self.sync,
        }
        proc = self._spawn(env)
        async with httpx.AsyncClient() as c:
            for _ in range(600):
                if proc.poll() is not None:
                    raise SystemExit(f"gateway exited: see {self.data_dir / 'gateway.log'}")
                with contextlib.suppress(httpx.HTTPError):
                    r = await c.get(f"{self.url}/healthz", timeout=1)
                    if r.status_code == 200 and r.json()["mqtt_connected"]:
                        return
                await asyncio.sleep(0.1)
        raise SystemExit("gateway did not start in 60 s")

    def _spawn(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.data_dir / "gateway.log").open("ab")
        args = ["run", "--data-dir", str(self.data_dir), "--api-port", str(self.api_port)]
        args += ["--mqtt-port", str(self.mqtt_port)]
        cmd = [str(PLANTY), *args]
        if self.profile:  # cProfile writes the file when the gateway stops (SIGTERM)
            cmd = [sys.executable, "-m", "cProfile", "-o", self.profile, *cmd]
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def mosquitto_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((mosquitto_directory(self.data_dir) / "mosquitto.pid").read_text().strip())
        return None

    def cleanup(self) -> None:
        self.kill9()
        pid = self.mosquitto_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def rss_mb(self) -> float:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


# ---------------------------------------------------------------- load


class RawHttp:
    """A lean HTTP/1.1 keep-alive client for the load: httpx's pool costs O(connections) per
    request in this process (and a failed `import sniffio` per call), which would make the
    load generator, not the gateway, the bottleneck at 1,000 requests/s on 2 cores."""

    def __init__(self, host: str, port: int, token: str, size: int = 64) -> None:
        self._addr = (host, port)
        self._head = f"Host: {host}\r\nAuthorization: Bearer {token}\r\n"
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(size)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        async with self._slots:
            reader, writer = (
                self._idle.pop() if self._idle else await asyncio.open_connection(*self._addr)
            )
            request = (
                f"{method} {path} HTTP/1.1\r\n{self._head}Content-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            writer.write(request)
            line = await reader.readline()
            if not line:  # the server closed an idle keep-alive connection: use a new one
                writer.close()
                reader, writer = await asyncio.open_connection(*self._addr)
                writer.write(request)
                line = await reader.readline()
            status = int(line.split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            payload = await reader.readexactly(length) if length else b""
            self._idle.append((reader, writer))
        return status, json.loads(payload) if payload else None

    async def close(self) -> None:
        for _, w in self._idle:
            w.close()


def cpu_s(pid: int) -> float:
    """User + system CPU time of a process so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used by the gateway, Mosquitto and this process over a phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {k: cpu_s(p) for k, p in pids.items()}
        self.t0 = time.perf_counter()

    def line(self, commands: int) -> str:
        wall = time.perf_counter() - self.t0
        used = {k: cpu_s(p) - self.start[k] for k, p in self.pids.items()}
        parts = [f"{k} {v / wall * 100:.0f}%" for k, v in used.items()]
        per = used.get("gateway", 0.0) / max(commands, 1) * 1e6
        return f"  CPU (of one core): {', '.join(parts)}; gateway {per:.0f} us per command"


async def open_loop(
    rate: float, seconds: float, one: Callable[[int], Awaitable[float | None]]
) -> tuple[list[float], int, float, int]:
    """Start `one(i)` at `rate`/s for `seconds`; returns latencies (ms), sent, elapsed, failed."""
    n = int(rate * seconds)
    lat: list[float] = []
    failed = 0
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def run(i: int) -> None:
        nonlocal failed
        try:
            v = await one(i)
        except Exception:
            v = None
        if v is None:
            failed += 1
        else:
            lat.append(v)

    for i in range(n):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(run(i)))
    await asyncio.gather(*tasks)
    return lat, n, loop.time() - t0, failed


async def gateway_round_trips(
    api: RawHttp, ids: list[str], rate: float, seconds: float
) -> tuple[list[float], int, float, int]:
    outcomes: collections.Counter[str] = collections.Counter()

    async def one(i: int) -> float | None:
        device = ids[i % len(ids)]
        body = {"action": "lamp.set", "args": {"value": (i % 10) / 10}, "wait_s": 10}
        started = time.perf_counter()
        status, c = await api.request("POST", f"/api/v1/devices/{device}/commands", body)
        elapsed = (time.perf_counter() - started) * 1000
        outcomes[c["state"] if status in (200, 202) else str(status)] += 1
        return elapsed if status == 200 and c["state"] == "acked" else None

    result = await open_loop(rate, seconds, one)
    if set(outcomes) != {"acked"}:
        print(f"  outcomes: {dict(outcomes)}")
    return result


async def outbox_throughput(
    api: RawHttp, ids: list[str], n: int, concurrency: int = 64
) -> tuple[float, float]:
    """Submit n commands (wait_s 0) from `concurrency` workers; returns (accepted/s, final/s)."""
    counter = itertools.count()
    t0 = time.perf_counter()

    async def worker() -> None:
        while (i := next(counter)) < n:
            body = {"action": "lamp.set", "args": {"value": (i % 10) / 10}}
            status, c = await api.request(
                "POST", f"/api/v1/devices/{ids[i % len(ids)]}/commands", body
            )
            if status != 202:
                raise SystemExit(f"submit refused: {status} {c}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    accepted = time.perf_counter() - t0
    while True:
        _, body = await api.request("GET", "/api/v1/commands?state=queued,sent&limit=1")
        if body["count"] == 0:
            break
        await asyncio.sleep(0.01)
    done = time.perf_counter() - t0
    return n / accepted, n / done


class BareClient:
    """The baseline: publish `cmd`, time the `ack`; nothing stored, nothing decided."""

    def __init__(self) -> None:
        self.client = Client("planty-gateway", clean_session=True)
        self.waiting: dict[str, tuple[float, asyncio.Future[float]]] = {}
        self.client.on_message = self._on_message

    def _on_message(self, _c: Client, _topic: str, payload: bytes, _qos: int, _p: Any) -> int:
        ack = decode_ack(payload)
        found = self.waiting.pop(ack.id, None)
        if found is not None and not found[1].done():
            found[1].set_result((time.perf_counter() - found[0]) * 1000)
        return 0

    async def connect(self, port: int, password: str) -> None:
        self.client.set_auth_credentials("planty-gateway", password)
        await self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.subscribe(TOPICS.subscription(Channel.ACK), qos=1)
        await asyncio.sleep(0.5)

    async def round_trips(
        self, ids: list[str], rate: float, seconds: float
    ) -> tuple[list[float], int, float, int]:
        loop = asyncio.get_running_loop()

        async def one(i: int) -> float | None:
            cid = f"p-bare-{rate:g}-{i}"  # `p-`: a late one would not even look unknown
            exp = int(time.time() * 1000) + 60_000
            payload = encode(Command(cid, "lamp.set", {"value": (i % 10) / 10}, exp))
            fut: asyncio.Future[float] = loop.create_future()
            self.waiting[cid] = (time.perf_counter(), fut)
            self.client.publish(TOPICS.device(ids[i % len(ids)], Channel.CMD), payload, qos=1)
            try:
                return await asyncio.wait_for(fut, 10)
            except TimeoutError:
                self.waiting.pop(cid, None)
                return None

        return await open_loop(rate, seconds, one)


# ---------------------------------------------------------------- main


async def provision(api: httpx.AsyncClient, n: int) -> list[DeviceCredentials]:
    """One bulk import (POST /api/v1/devices/import): seconds, where 1,000 single
    registrations took a minute of the shared machine before every run."""
    r = await api.post("/api/v1/devices/import", json=[{"id": f"bench-{i:05d}"} for i in range(n)])
    r.raise_for_status()
    b = r.json()
    m = b["mqtt"]
    creds = [
        DeviceCredentials(d["id"], d["token"], m["host"], m["port"], m["tls"], m["ca_pem"])
        for d in b["devices"]
    ]
    return sorted(creds, key=lambda c: c.device_id)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rates", default="100,1000", help="commands/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="per rate")
    ap.add_argument("--outbox", type=int, default=10_000, help="commands in the throughput run")
    ap.add_argument("--profile", help="run the gateway under cProfile into this file (no baseline)")
    ap.add_argument(
        "--connections",
        type=int,
        default=512,
        help="HTTP connections of the load (open loop: a cap makes it closed once latency "
        "exceeds connections / rate; it was 64, i.e. 64 ms at 1,000/s; the gateway's "
        "api.max_connections is 1,000)",
    )
    ap.add_argument("--py-spy", help="record the gateway with py-spy during the rates (.svg, .txt)")
    ap.add_argument("--py-spy-bin", default="py-spy", help="the py-spy executable")
    ap.add_argument(
        "--sqlite-synchronous",
        default="full",
        help="store.sqlite_synchronous: full (default: survives power loss) or normal",
    )
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    import logging

    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="planty-bench-cmd-") as tmp:
        gw = GatewayProc(Path(tmp) / "data", args.profile, args.sqlite_synchronous)
        print(f"SQLite synchronous={args.sqlite_synchronous}")
        gw.data_dir.mkdir(parents=True)
        fleet: Fleet | None = None
        try:
            await gw.start()
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
            async with httpx.AsyncClient(
                base_url=gw.url,
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=30,
                limits=limits,
            ) as api:
                t = time.perf_counter()
                creds = await provision(api, args.devices)
                print(f"provisioned {len(creds)} devices in {time.perf_counter() - t:.1f} s")
                profile = DeviceProfile(interval_s=600, max_inflight=100)
                fleet = Fleet(creds, profile, connect_concurrency=64, wait_online_s=120)
                t = time.perf_counter()
                online = await fleet.start()
                while True:
                    d = (await api.get("/api/v1/devices")).json()
                    if d["online"] >= online:
                        break
                    await asyncio.sleep(0.2)
                print(f"{online} simulated devices online (TLS) in {time.perf_counter() - t:.1f} s")
                ids = [c.device_id for c in creds]
                raw = RawHttp("127.0.0.1", gw.api_port, ADMIN, args.connections)
                await gateway_round_trips(raw, ids, 50, 2)  # warm-up
                print("\ncommand round trip, API call -> device ack -> final state via the API")
                results: dict[float, list[float]] = {}
                assert gw.proc is not None
                pids = {"gateway": gw.proc.pid, "mosquitto": gw.mosquitto_pid() or 0}
                pids["bench (fleet + load)"] = os.getpid()
                await asyncio.sleep(10)  # let the fleet's connect storm (statuses, presence) settle
                meter = CpuMeter(pids)
                await asyncio.sleep(5)
                print("idle, fleet online, no commands:" + meter.line(0).split(";")[0][2:])
                spy = None
                if args.py_spy:  # sample the gateway's threads during the rates
                    spy = subprocess.Popen(
                        [
                            args.py_spy_bin,
                            "record",
                            "-p",
                            str(gw.proc.pid),
                            "-o",
                            args.py_spy,
                            "-r",
                            "250",
                            "-f",
                            "raw" if args.py_spy.endswith(".txt") else "flamegraph",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    await asyncio.sleep(1.0)
                for rate in rates:
                    meter = CpuMeter(pids)
                    lat, sent, elapsed, failed = await gateway_round_trips(
                        raw, ids, rate, args.seconds
                    )
                    results[rate] = lat
                    print(summary(f"gateway  @ {rate:g}/s", lat, sent, elapsed, failed))
                    print(meter.line(sent))
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
                meter = CpuMeter(pids)
                acc, fin = await outbox_throughput(raw, ids, args.outbox)
                await raw.close()
                print(
                    f"\noutbox throughput: {args.outbox} commands: accepted {acc:,.0f}/s, "
                    f"all final (acked) at {fin:,.0f}/s; gateway RSS {gw.rss_mb():.0f} MB"
                )
                print(meter.line(args.outbox))
            if args.profile:
                gw.stop()
                print(f"profile written to {args.profile}")
                return
            mosq = gw.mosquitto_pid()
            gw.kill9()  # the fleet and Mosquitto stay up; no broker logic from here on
            assert mosq is not None
            secret = (gw.data_dir / "mqtt-gateway.secret").read_text().strip()
            bare = BareClient()
            await bare.connect(gw.internal_port, secret)
            await bare.round_trips(ids, 50, 2)  # warm-up
            print("\nbare MQTT publish -> ack (same Mosquitto, same devices, gateway killed)")
            for rate in rates:
                lat, sent, elapsed, failed = await bare.round_trips(ids, rate, args.seconds)
                print(summary(f"bare     @ {rate:g}/s", lat, sent, elapsed, failed))
                g = results[rate]
                print(
                    f"{'':34} gateway / bare: p50 {pct(g, 0.5) / pct(lat, 0.5):.2f}x  "
                    f"p99 {pct(g, 0.99) / pct(lat, 0.99):.2f}x"
                )
            await bare.client.disconnect()
            print("\nload average at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
        finally:
            if fleet is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(fleet.stop(), 30)
            gw.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
