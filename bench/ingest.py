"""Ingest benchmark: N devices publish QoS 1 telemetry as fast as they can through a real Mosquitto.

Two phases in one run, same load generator, same Mosquitto configuration:
  1. baseline: a bare gmqtt subscriber (no processing, optimistic PUBACK) receives the stream;
  2. gateway: `planty run` (separate process, its own supervised Mosquitto) stores it in SQLite.
Prints sustained stored readings/s, publish -> stored latency percentiles (stored = visible in
the SQLite file, polled every 5 ms by a reader in this process), gateway RSS, the bare
subscriber's rate, and the ratio gateway / bare (the issue's figure; aim >= 0.5 at 1,000 devices).

    .venv/bin/python bench/ingest.py --devices 1000 --messages 40 [--tls]
    .venv/bin/python bench/ingest.py --devices 1000 --messages 20 --rate 5 --status --import

`--status`: each device publishes its retained status (declaring sensors, actuators, fw,
interval) as it logs in, right before its telemetry, as the firmware does; the bench reports
how many of those first statuses were stored (the device's row carries the declared fw) and
how long after being published. `--import` registers the fleet with one bulk import.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from gmqtt import Client
from measure import free_port, machine_line, pct

from planty_broker.config import load_settings
from planty_broker.mqttserver.layout import MosquittoLayout, MqttAccount
from planty_broker.mqttserver.passwords import hash_token
from planty_broker.mqttserver.supervisor import MosquittoSupervisor
from planty_broker.ports.device_authority import AclGrant
from planty_broker.protocol import Channel, Status, Telemetry, Topics, encode
from planty_broker.transport.mqtt import LinkConfig, MqttLink

REPO = Path(__file__).resolve().parents[1]
TOPICS = Topics()
BENCH_FW = "bench-1.0"  # what every device's status declares; its row carries it once stored
SPY_FORMATS = {".json": "speedscope", ".txt": "raw"}


async def _noop(_t: str, _p: bytes, _r: bool) -> None:
    return None


class Load:
    """N device connections publishing M QoS 1 messages each, with a per-device in-flight cap."""

    def __init__(
        self,
        creds: list[tuple[str, str]],
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        messages: int,
        inflight: int,
        rate: float = 0.0,
        status: bool = False,
    ) -> None:
        self.creds, self.host, self.port, self.tls = creds, host, port, tls
        self.messages, self.inflight, self.rate = messages, inflight, rate
        self.status = status
        self.status_sent_ms: dict[str, float] = {}  # device -> when its status went out
        self.links: list[MqttLink] = []

    async def connect(self) -> None:
        sem = asyncio.Semaphore(50)

        async def one(device_id: str, token: str) -> MqttLink:
            async with sem:
                link = MqttLink(
                    LinkConfig(
                        host=self.host,
                        port=self.port,
                        client_id=device_id,
                        username=device_id,
                        password=token,
                        tls=self.tls,
                        keepalive_s=60,
                        max_inflight=self.inflight,
                        persistent_session=False,
                        mqtt5=False,
                    ),
                    [],
                    _noop,
                )
                await link.connect()
                return link

        self.links = list(await asyncio.gather(*(one(d, t) for d, t in self.creds)))

    async def run(self) -> float:
        """Publish everything; returns the seconds it took until every PUBACK came back."""
        started = time.perf_counter()

        async def device(link: MqttLink, device_id: str) -> None:
            topic = TOPICS.device(device_id, Channel.TELEMETRY)
            if self.rate:  # spread the devices' first messages over one period
                await asyncio.sleep(random.random() / self.rate)
            if self.status:  # a login: the retained status, then the readings
                body = Status(
                    online=True,
                    fw=BENCH_FW,
                    sensors=("temperature", "soil_moisture", "light"),
                    actuators=("pump",),
                    interval_s=1 / self.rate if self.rate else 1.0,
                )
                self.status_sent_ms[device_id] = time.time_ns() / 1e6
                await link.publish(
                    TOPICS.device(device_id, Channel.STATUS), encode(body), qos=1, retain=True
                )
            for seq in range(self.messages):
                if self.rate and seq:
                    await asyncio.sleep(1 / self.rate)
                payload = encode(
                    Telemetry(
                        seq=seq,
                        ts=time.time_ns() // 1_000_000,
                        readings={"temperature": 21.5, "soil_moisture": 0.43, "light": 812},
                    )
                )
                await link.publish(topic, payload, qos=1)
            while link.inflight:
                await asyncio.sleep(0.01)

        await asyncio.gather(
            *(device(link, d) for link, (d, _t) in zip(self.links, self.creds, strict=True))
        )
        return time.perf_counter() - started

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links), return_exceptions=True)


async def baseline(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Phase 1: the same stream to a bare subscriber on a Mosquitto with our configuration."""
    settings = load_settings(
        env={},
        overrides={
            "gateway": {"data_dir": str(workdir / "baseline")},
            "mqtt": {
                "port": free_port(),
                "internal_port": free_port(),
                "public_host": "localhost",
                "plaintext_loopback_port": 0 if args.tls else free_port(),
            },
        },
    )
    creds = [
        (f"bench-{i:05d}", f"token-{i:05d}-{os.urandom(8).hex()}") for i in range(args.devices)
    ]
    users = {d: hash_token(t) for d, t in creds}
    observer_pw = os.urandom(16).hex()

    async def provider() -> dict[str, str]:
        return users

    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the supervisor writes ports.json there
    layout = MosquittoLayout.from_settings(settings)
    observer = MqttAccount("bench-observer", hash_token(observer_pw), (AclGrant("read", "#"),))
    async with MosquittoSupervisor(layout, provider, extra_accounts=[observer]) as sup:
        received = 0
        first = last = 0.0
        done = asyncio.Event()
        total = args.devices * args.messages

        def on_message(_c: Client, _topic: str, _payload: bytes, _qos: int, _p: Any) -> int:
            nonlocal received, first, last
            now = time.perf_counter()
            if received == 0:
                first = now
            received += 1
            last = now
            if received >= total:
                done.set()
            return 0

        sub = Client("bench-observer", clean_session=True)
        sub.set_auth_credentials("bench-observer", observer_pw)
        sub.on_message = on_message
        host, port = sup.internal_url
        await sub.connect(host, port)
        sub.subscribe(TOPICS.subscription(Channel.TELEMETRY), qos=1)
        await asyncio.sleep(0.5)
        tls, dport = _device_endpoint(
            args, sup.ca_pem, settings.mqtt.plaintext_loopback_port, layout.port
        )
        load = Load(
            creds, "localhost", dport, tls, args.messages, args.inflight, args.rate, args.status
        )
        await load.connect()
        publish_s = await load.run()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 120)
        await load.close()
        await sub.disconnect()
    elapsed = max(last - first, 1e-9)
    return {"received": received, "rate": received / elapsed, "publish_s": publish_s}


def _device_endpoint(
    args: argparse.Namespace, ca_pem: str, plain_port: int, tls_port: int
) -> tuple[ssl.SSLContext | None, int]:
    if args.tls:
        return ssl.create_default_context(cadata=ca_pem), tls_port
    return None, plain_port


class StoredWatcher(threading.Thread):
    """Polls the gateway's SQLite file every 5 ms: when each reading became visible."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db, self.stop = db, threading.Event()
        self.latencies_ms: list[float] = []
        self.first = self.last = 0.0
        self.count = 0
        self.statuses = False  # also watch for stored statuses (the declared fw)
        self.status_seen_ms: dict[str, float] = {}
        self.load_end_ms: float | None = None
        self.first_uses = 0  # credentials whose first login is stored (polled every ~20 ms)
        self.first_uses_ms: list[tuple[float, int]] = []  # (wall ms, count) when it changed

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        last_rowid = 0
        polls = 0
        while not self.stop.is_set():
            now_ms = time.time_ns() / 1e6
            rows = conn.execute(
                "SELECT rowid, ts_ms FROM readings WHERE rowid > ? ORDER BY rowid", (last_rowid,)
            ).fetchall()
            if rows:
                t = time.perf_counter()
                if not self.count:
                    self.first = t
                self.last = t
                self.count += len(rows)
                last_rowid = rows[-1][0]
                self.latencies_ms.extend(now_ms - ts for _r, ts in rows)
            if (polls := polls + 1) % 4 == 0:  # every ~20 ms
                self._poll_first_uses(conn)
            if self.statuses and polls % 4 == 0:
                now_ms = time.time_ns() / 1e6
                q = "SELECT id FROM devices WHERE fw = ?"
                for (device_id,) in conn.execute(q, (BENCH_FW,)):
                    self.status_seen_ms.setdefault(device_id, now_ms)
            time.sleep(0.005)
        conn.close()


    def _poll_first_uses(self, conn: sqlite3.Connection) -> None:
        q = "SELECT count(*) FROM device_credentials WHERE first_used_ms IS NOT NULL"
        try:
            (n,) = conn.execute(q).fetchone()
        except sqlite3.OperationalError:  # the table not there yet
            return
        if n != self.first_uses:
            self.first_uses = n
            self.first_uses_ms.append((time.time_ns() / 1e6, n))


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            out[k] = int(v.split()[0])
    return out


async def gateway(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Phase 2: the same stream into `planty run`, stored in SQLite."""
    data = workdir / "gateway"
    api_port, mqtt_port, plain_port = free_port(), free_port(), free_port()
    token = "bench-admin-" + os.urandom(8).hex()
    env = {
        **os.environ,
        "PLANTY_ADMIN_TOKEN": token,
        "PLANTY_MQTT_INTERNAL_PORT": str(free_port()),
        "PLANTY_MQTT_X509_PORT": str(free_port()),
        "PLANTY_MQTT_PUBLIC_HOST": "localhost",
        "PLANTY_LOG_LEVEL": "warning",
    }
    if not args.tls:
        env["PLANTY_MQTT_PLAINTEXT_LOOPBACK_PORT"] = str(plain_port)
    if args.slow_callback_ms:
        env["PLANTY_LOG_SLOW_CALLBACK_MS"] = str(args.slow_callback_ms)
    planty = Path(sys.executable).parent / "planty"
    log = (workdir / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [
            str(planty),
            "run",
            "--data-dir",
            str(data),
            "--api-port",
            str(api_port),
            "--mqtt-port",
            str(mqtt_port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api_port}",
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
        ) as api:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if (await api.get("/healthz")).json().get("mqtt_connected"):
                        break
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                proc.poll()
            if proc.returncode is not None or not (await api.get("/healthz")).is_success:
                log.close()
                raise SystemExit(
                    "gateway did not start:\n" + (workdir / "gateway.log").read_text()[-3000:]
                )
            sem = asyncio.Semaphore(20)

            async def add(i: int) -> tuple[str, str, str]:
                async with sem:
                    r = await api.post("/api/v1/devices", json={"id": f"bench-{i:05d}"})
                    r.raise_for_status()
                    body = r.json()
                    return body["id"], body["token"], body["mqtt"]["ca_pem"]

            if args.bulk_import:
                rows = [{"id": f"bench-{i:05d}"} for i in range(args.devices)]
                r = await api.post("/api/v1/devices/import", json=rows)
                r.raise_for_status()
                body = r.json()
                ca = body["mqtt"]["ca_pem"]
                made = [(d["id"], d["token"], ca) for d in body["devices"]]
            else:
                made = await asyncio.gather(*(add(i) for i in range(args.devices)))
        creds = [(d, t) for d, t, _ in made]
        tls, dport = _device_endpoint(args, made[0][2], plain_port, mqtt_port)
        rss_before = rss_kib(proc.pid)
        watcher = StoredWatcher(data / "planty.sqlite3")
        watcher.statuses = args.status
        watcher.start()
        load = Load(
            creds, "localhost", dport, tls, args.messages, args.inflight, args.rate, args.status
        )
        connect_ms = time.time_ns() / 1e6
        await load.connect()
        if args.settle_s:  # each device's first login is stored (its token's first use)
            await asyncio.sleep(args.settle_s)
        spy = None
        if args.py_spy:  # sample the gateway's threads during the load
            spy = subprocess.Popen(
                [
                    *(args.py_spy_bin, "record", "-p", str(proc.pid), "-o", args.py_spy),
                    *("-r", "250", "-f"),
                    SPY_FORMATS.get(Path(args.py_spy).suffix, "flamegraph"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)
        cpu0 = proc_cpu_s(proc.pid)
        publish_s = await load.run()
        watcher.load_end_ms = time.time_ns() / 1e6  # every reading published and PUBACKed
        total = args.devices * args.messages
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            watcher.count < total or len(watcher.status_seen_ms) < len(load.status_sent_ms)
        ):
            await asyncio.sleep(0.05)
        rss_after = rss_kib(proc.pid)
        cpu_s = proc_cpu_s(proc.pid) - cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        for _ in range(200):  # the first logins, recorded from Mosquitto's log (<= 10 s more)
            if watcher.first_uses >= args.devices:
                break
            await asyncio.sleep(0.05)
        watcher.stop.set()
        watcher.join()
        await load.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    elapsed = max(watcher.last - watcher.first, 1e-9)
    lat = watcher.latencies_ms
    slow = [ln for ln in (workdir / "gateway.log").read_text().splitlines() if "Executing" in ln]
    sent, seen = load.status_sent_ms, watcher.status_seen_ms
    status_lat = [seen[d] - sent[d] for d in seen if d in sent]
    during = sum(1 for d in seen if seen[d] <= (watcher.load_end_ms or float("inf")))
    return {
        "statuses_sent": len(sent),
        "statuses_stored": len(seen),
        "statuses_during_load": during,
        "status_lat": status_lat,
        "status_all_s": (max(seen.values()) - min(sent.values())) / 1000 if seen else float("nan"),
        "slow_callbacks": slow,
        "first_uses": watcher.first_uses,
        "first_uses_all_s": (watcher.first_uses_ms[-1][0] - connect_ms) / 1000
        if watcher.first_uses_ms
        else float("nan"),
        "cpu_us": cpu_s / max(watcher.count, 1) * 1e6,
        "stored": watcher.count,
        "rate": watcher.count / elapsed,
        "publish_s": publish_s,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "max": max(lat) if lat else float("nan"),
        "rss_before": rss_before,
        "rss_after": rss_after,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=40, help="messages per device")
    ap.add_argument("--inflight", type=int, default=10, help="unacked QoS 1 publishes per device")
    ap.add_argument(
        "--tls", action="store_true", help="devices connect over TLS (default: loopback plaintext)"
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="messages/s per device (default 0: as fast as they can, the saturation figure)",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="bare + gateway pairs; the median is the figure"
    )
    ap.add_argument(
        "--py-spy", help="record the gateway with py-spy into FILE (.svg, .json, .txt raw)"
    )
    ap.add_argument("--py-spy-bin", default="py-spy", help="the py-spy executable")
    ap.add_argument(
        "--settle-s",
        type=float,
        default=0.0,
        help="wait after the devices connected, before the load: the gateway stores each "
        "device's first login (one commit per device), which otherwise queues with the "
        "first readings (default 0: the load starts at once, as in the earlier figures)",
    )
    ap.add_argument(
        "--status",
        action="store_true",
        help="each device publishes its retained status (a login) before its telemetry",
    )
    ap.add_argument(
        "--import",
        dest="bulk_import",
        action="store_true",
        help="register the fleet with one bulk import (POST /api/v1/devices/import)",
    )
    ap.add_argument(
        "--slow-callback-ms",
        type=float,
        default=0.0,
        help="asyncio debug mode in the gateway: log callbacks that hold the loop longer",
    )
    args = ap.parse_args()
    print(machine_line())
    pace = f"{args.rate:g} msg/s each" if args.rate else "as fast as they can"
    print(
        f"load: {args.devices} devices x {args.messages} QoS 1 messages ({pace}), "
        f"{args.inflight} in flight "
        f"each, {'TLS' if args.tls else 'plaintext loopback'} device connections"
    )
    ratios: list[float] = []
    for n in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="planty-bench-") as tmp:
            workdir = Path(tmp)
            os.chmod(workdir, 0o711)  # Mosquitto drops root and must reach its folder
            base = await baseline(args, workdir)
            gw = await gateway(args, workdir)
        ratio = gw["rate"] / base["rate"] if base["rate"] else float("nan")
        ratios.append(ratio)
        print(f"round {n}:")
        print(
            f"  bare subscriber: received {base['received']} at {base['rate']:,.0f} msg/s "
            f"(publishers done in {base['publish_s']:.1f} s)"
        )
        print(
            f"  gateway: stored {gw['stored']} at {gw['rate']:,.0f} readings/s "
            f"(publishers done in {gw['publish_s']:.1f} s), lost "
            f"{args.devices * args.messages - gw['stored']}"
        )
        print(
            f"  publish -> stored latency: p50 {gw['p50']:.1f} ms, p99 {gw['p99']:.1f} ms, "
            f"max {gw['max']:.1f} ms (5 ms polling resolution)"
        )
        print(
            f"  gateway RSS: {gw['rss_before'].get('VmRSS', 0) / 1024:.0f} MiB before load, "
            f"{gw['rss_after'].get('VmRSS', 0) / 1024:.0f} MiB after, peak "
            f"{gw['rss_after'].get('VmHWM', 0) / 1024:.0f} MiB"
        )
        print(f"  gateway CPU per stored reading: {gw['cpu_us']:.0f} us")
        if args.status:
            lat = gw["status_lat"]
            print(
                f"  statuses (first logins): {gw['statuses_stored']} of {gw['statuses_sent']} "
                f"stored, {gw['statuses_during_load']} of them by the time the readings were all "
                f"PUBACKed; publish -> stored p50 {pct(lat, 0.5):.0f} ms, p99 "
                f"{pct(lat, 0.99):.0f} ms, max {max(lat) if lat else float('nan'):.0f} ms; all "
                f"stored {gw['status_all_s']:.2f} s after the first was sent (~20 ms polling)"
            )
        print(
            f"  first logins recorded (each token's first use): {gw['first_uses']} of "
            f"{args.devices}, the last {gw['first_uses_all_s']:.2f} s after the devices began to "
            "connect (~20 ms polling)"
        )
        print(f"  ratio gateway / bare: {ratio:.2f}")
        if args.slow_callback_ms:
            print(f"  slow callbacks (> {args.slow_callback_ms:g} ms): {len(gw['slow_callbacks'])}")
            for line in gw["slow_callbacks"][:15]:
                print("    " + line[-300:])
    print(
        f"ratio gateway / bare, median of {len(ratios)} rounds: {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}; aim >= 0.5)"
    )


if __name__ == "__main__":
    asyncio.run(main())
