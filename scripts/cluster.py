"""bin/cluster: the scale-out set-up on one machine (issue 15, docs/scale-out.md).

    bin/cluster start [--gateways N]    3 RabbitMQ nodes, a private PostgreSQL, N gateways
    bin/cluster status
    bin/cluster stop
    bin/cluster check [--devices N] [--gateways N] [--seconds S]

Everything comes from Debian's packages (rabbitmq-server, postgresql) and runs on free
ports, in its own folder (`BIN_CLUSTER_DIR`, default /tmp/planty-cluster): never the
system RabbitMQ (5672/1883) or PostgreSQL (5432). `check` starts its own set-up when none
runs, streams QoS 1 telemetry over TLS from simulated devices while commands flow and a
rule fires, kills one gateway (kill -9), one RabbitMQ node (kill -9), restarts the gateway
and brings the node back, then counts. Its last line:

    cluster: lost=N doubled=N commands_final=N/N rule_double_fires=N

and it exits 0 only when nothing PUBACKed was lost, nothing stored twice, every command
reached a final state and ran at most once, and no rule fired twice within its cooldown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import pwd
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psycopg

from planty_broker.domain.commands import FINAL_STATES
from planty_broker.mqttserver.pki import ensure_pki
from planty_broker.mqttserver.rabbit_nodes import ADMIN_USER, ClusterSpec, RabbitNode, free_port
from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import DeviceProfile
from planty_broker.simulator.provision import provision_devices

ROOT = Path(__file__).resolve().parents[1]
PLANTY = ROOT / ".venv" / "bin" / "planty"
RULE_ID = "cluster-check-lamp"
RULE_COOLDOWN_S = 8


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def base_dir() -> Path:
    return Path(os.environ.get("BIN_CLUSTER_DIR", "/tmp/planty-cluster"))  # noqa: S108 - a dev set-up


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise SystemExit("cluster: no PostgreSQL server binaries (apt-get install postgresql)")
    return str(candidates[-1])


# ---------------------------------------------------------------- PostgreSQL


def _as_postgres() -> list[str]:
    if os.geteuid() != 0:
        return []
    pwd.getpwnam("postgres")
    return ["runuser", "-u", "postgres", "--"]


def pg_start(base: Path, port: int) -> str:
    pgdir = base / "pg"
    data = pgdir / "data"
    user = _as_postgres()
    if not data.exists():
        pgdir.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(pgdir, "postgres")
        subprocess.run(
            [*user, _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    subprocess.run(
        [*user, _pg_bin("pg_ctl"), "-D", str(data), "-l", str(pgdir / "log"), "-w", "-t", "60",
         "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {pgdir} -c max_connections=200",
         "start"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"


def pg_stop(base: Path) -> None:
    data = base / "pg" / "data"
    if data.exists():
        subprocess.run(
            [*_as_postgres(), _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip


# ---------------------------------------------------------------- gateways


@dataclass
class GatewayProc:
    index: int
    api_port: int
    config: Path
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def alive(self) -> bool:
        if not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return False
        return True


def write_gateway_config(
    base: Path, i: int, spec: ClusterSpec, pg_url: str, token: str, api_port: int
) -> Path:
    data = base / f"gw{i}"
    data.mkdir(parents=True, exist_ok=True)
    endpoints = ",".join(f"localhost:{p}" for p in spec.mqtts_ports())
    cfg = f"""[gateway]
data_dir = "{data}"
admin_token = "{token}"
broker_id = "planty-cluster"

[api]
port = {api_port}

[store]
url = "{pg_url}"

[cluster]
engine = "rabbitmq"
amqp_urls = "{",".join(spec.amqp_urls())}"
management_urls = "{",".join(spec.management_urls())}"
admin_user = "{ADMIN_USER}"
admin_password = "{spec.admin_password}"
device_endpoints = "{endpoints}"
ca_file = "{spec.ca_cert}"
ca_key_file = "{Path(spec.ca_cert).with_name("ca.key")}"
crl_dir = "{spec.crl_dir}"
shared_dir = "{base / "shared"}"

[commands]
ack_timeout_s = 5.0
max_attempts = 6

"""
    path = data / "planty.toml"
    path.write_text(cfg)
    path.chmod(0o600)
    return path


def gateway_start(gw: GatewayProc) -> None:
    log = (gw.config.parent / "gateway.log").open("ab")
    proc = subprocess.Popen(
        [str(PLANTY), "run", "-c", str(gw.config)],
        env={k: v for k, v in os.environ.items() if not k.startswith("PLANTY_")},
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=gw.config.parent,
    )  # fmt: skip
    log.close()
    gw.pid = proc.pid


def gateway_kill(gw: GatewayProc, sig: int = signal.SIGKILL) -> None:
    if gw.pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(gw.pid, sig)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(gw.pid, 0)
    gw.pid = 0


async def health(gw: GatewayProc) -> dict[str, Any] | None:
    try:
        async with httpx.AsyncClient(timeout=3) as c:
            r = await c.get(gw.url + "/healthz")
        return dict(r.json()) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def wait_healthy(gw: GatewayProc, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        h = await health(gw)
        if h and h.get("mqtt_connected"):
            return
        if not gw.alive():
            tail = (gw.config.parent / "gateway.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"cluster: gateway {gw.index} exited:\n{tail}")
        await asyncio.sleep(0.5)
    raise SystemExit(f"cluster: gateway {gw.index} not healthy after {timeout_s:.0f} s")


async def leader(gws: list[GatewayProc], timeout_s: float = 60) -> GatewayProc:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for gw in gws:
            if gw.alive():
                h = await health(gw)
                if h and h.get("role") == "leader":
                    return gw
        await asyncio.sleep(0.3)
    raise RuntimeError("no gateway holds the lease")


# ---------------------------------------------------------------- the set-up


@dataclass
class Cluster:
    base: Path
    spec: ClusterSpec
    nodes: list[RabbitNode]
    pg_url: str
    token: str
    gateways: list[GatewayProc]

    def save(self) -> None:
        state = {
            "pg_url": self.pg_url,
            "token": self.token,
            "gateways": [
                {"index": g.index, "api_port": g.api_port, "config": str(g.config), "pid": g.pid}
                for g in self.gateways
            ],
        }
        (self.base / "state.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, base: Path) -> Cluster | None:
        try:
            state = json.loads((base / "state.json").read_text())
            spec = ClusterSpec.load(base)
        except (OSError, ValueError):
            return None
        nodes = [RabbitNode(spec, i) for i in range(len(spec.nodes))]
        gws = [
            GatewayProc(g["index"], g["api_port"], Path(g["config"]), g["pid"])
            for g in state["gateways"]
        ]
        return cls(base, spec, nodes, state["pg_url"], state["token"], gws)


async def start(gateways: int, nodes: int = 3) -> Cluster:
    base = base_dir()
    if Cluster.load(base) is not None:
        raise SystemExit(f"cluster: already set up in {base}; `bin/cluster stop` first")
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    (base / "shared").mkdir(exist_ok=True)
    pki = ensure_pki(base / "pki", ["localhost"])
    (base / "crl").mkdir(exist_ok=True)  # the device CA's CRL: gateways write, nodes read
    spec = ClusterSpec.new(
        base,
        nodes,
        ca_cert=pki.ca_cert_path,
        server_cert=pki.cert_path,
        server_key=pki.key_path,
        crl_dir=base / "crl",
    )
    spec.save()
    rabbit = [RabbitNode(spec, i) for i in range(nodes)]
    say(f"starting {nodes} RabbitMQ nodes ({', '.join(n.name for n in rabbit)})")
    t = time.monotonic()
    for n in rabbit:
        n.start()
    await asyncio.gather(*(asyncio.to_thread(n.wait_ready, 240, nodes) for n in rabbit))
    say(f"RabbitMQ cluster of {nodes} ready in {time.monotonic() - t:.0f} s")
    pg_port = free_port()
    pg_url = await asyncio.to_thread(pg_start, base, pg_port)
    say(f"PostgreSQL on 127.0.0.1:{pg_port}")
    token = secrets.token_urlsafe(24)
    gws = []
    for i in range(gateways):
        port = free_port()
        gws.append(GatewayProc(i, port, write_gateway_config(base, i, spec, pg_url, token, port)))
    cluster = Cluster(base, spec, rabbit, pg_url, token, gws)
    # the first gateway migrates the database; the others start once it is up
    gateway_start(gws[0])
    cluster.save()
    await wait_healthy(gws[0])
    for gw in gws[1:]:
        gateway_start(gw)
    cluster.save()
    for gw in gws[1:]:
        await wait_healthy(gw)
    say(f"{gateways} gateway instance(s): " + ", ".join(g.url for g in gws))
    say(f"devices connect over TLS to localhost:{spec.mqtts_ports()} (CA {spec.ca_cert})")
    say(f"admin token in {base / 'state.json'}")
    return cluster


def stop() -> None:
    base = base_dir()
    cluster = Cluster.load(base)
    if cluster is not None:
        for gw in cluster.gateways:
            gateway_kill(gw, signal.SIGTERM)
        for n in cluster.nodes:
            n.stop(timeout_s=20)
    elif (base / "cluster.json").exists():
        spec = ClusterSpec.load(base)
        for i in range(len(spec.nodes)):
            RabbitNode(spec, i).kill9()
    pg_stop(base)
    shutil.rmtree(base, ignore_errors=True)
    say(f"cluster stopped and {base} removed")


async def status() -> None:
    cluster = Cluster.load(base_dir())
    if cluster is None:
        say("no cluster")
        return
    for n in cluster.nodes:
        say(f"node {n.name}: {'up' if n.alive() else 'down'} (mqtts {n.ports.mqtts})")
    for gw in cluster.gateways:
        h = await health(gw)
        say(f"gateway {gw.index} {gw.url}: {h.get('role') if h else 'down'}")


# ---------------------------------------------------------------- the check


@dataclass
class Outcome:
    lost: int
    doubled: int
    commands_final: int
    commands: int
    commands_run_twice: int
    rule_fires: int
    rule_double_fires: int
    acked: int
    stored: int
    lost_keys: frozenset[tuple[str, int]] = frozenset()
    not_final: tuple[tuple[str, str], ...] = ()  # (command id, state) of those not final
    final_states: tuple[tuple[str, int], ...] = ()  # (state, commands) of the final ones

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.doubled == 0
            and self.commands_final == self.commands
            and self.commands_run_twice == 0
            and self.rule_double_fires == 0
        )

    def line(self) -> str:
        return (
            f"cluster: lost={self.lost} doubled={self.doubled} "
            f"commands_final={self.commands_final}/{self.commands} "
            f"rule_double_fires={self.rule_double_fires}"
        )


async def _commands_loop(
    cluster: Cluster, ids: list[str], sent: list[str], stop_at: asyncio.Event, every_s: float
) -> None:
    rng = random.Random(7)  # noqa: S311 - test traffic
    headers = {"Authorization": f"Bearer {cluster.token}"}
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        while not stop_at.is_set():
            try:  # any live instance: a worker forwards to the lease holder
                live = [g for g in cluster.gateways if g.alive()]
                gw = rng.choice(live) if live else await leader(cluster.gateways, timeout_s=30)
                device = rng.choice(ids)
                r = await client.post(
                    f"{gw.url}/api/v1/devices/{device}/commands",
                    json={"action": "pump.on", "args": {"seconds": 1}, "ttl_s": 600},
                )
                if r.status_code in (200, 202):
                    sent.append(r.json()["id"])
            except (httpx.HTTPError, RuntimeError, ValueError):
                pass  # the leader just died: the next one answers
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_at.wait(), every_s)


async def _median_temperature(pg: str) -> float:
    async with await psycopg.AsyncConnection.connect(pg) as conn:
        cur = await conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP "
            "(ORDER BY (\"values\"->>'temperature')::float) FROM readings"
        )
        row = await cur.fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def _pg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


async def _count(pg: str, fleet: list[SimDevice], sent: list[str], cooldown_ms: int) -> Outcome:
    async with await psycopg.AsyncConnection.connect(pg) as conn:
        cur = await conn.execute("SELECT device_id, seq, count(*) FROM readings GROUP BY 1, 2")
        stored = {(d, int(s)): int(n) for d, s, n in await cur.fetchall()}
        cur = await conn.execute("SELECT id, state FROM commands WHERE id = ANY(%s)", (sent,))
        states = dict(await cur.fetchall())
        cur = await conn.execute(  # the fire's decision time, on the broker's clock
            "SELECT device_id, at_ms FROM rule_history WHERE outcome = 'fire' AND rule_id = %s "
            "ORDER BY device_id, at_ms",
            (RULE_ID,),
        )
        fires = await cur.fetchall()
    acked = {(d.device_id, s) for d in fleet for s in d.acked_seqs}
    lost_keys = frozenset(acked - stored.keys())
    lost = len(lost_keys)
    doubled = sum(n - 1 for n in stored.values() if n > 1)
    # every final state: a queued pump.on superseded by a newer one for the same actuator
    # (or cancelled) has ended too, and ran nowhere
    final_names = {s.value for s in FINAL_STATES}
    final = sum(1 for c in sent if states.get(c) in final_names)
    not_final = tuple((c, str(states.get(c))) for c in sent if states.get(c) not in final_names)
    by_state = Counter(str(states.get(c)) for c in sent if states.get(c) in final_names)
    runs: Counter[str] = Counter()
    for d in fleet:
        for e in d.executions():
            if e.command_id:
                runs[e.command_id] += 1
    twice = sum(1 for n in runs.values() if n > 1)
    double_fires = 0
    last: dict[str, int] = {}
    for device_id, at in fires:
        prev = last.get(device_id)
        if prev is not None and at - prev < cooldown_ms:
            double_fires += 1
        last[device_id] = at
    return Outcome(
        lost, doubled, final, len(sent), twice, len(fires), double_fires, len(acked),
        sum(stored.values()), lost_keys, not_final[:20], tuple(sorted(by_state.items())),
    )  # fmt: skip


async def check(
    devices: int, gateways: int, seconds: float, interval_s: float, keep: bool = False
) -> Outcome:
    owned = Cluster.load(base_dir()) is None
    try:
        cluster = await start(gateways) if owned else Cluster.load(base_dir())
        assert cluster is not None
        return await _scenario(cluster, devices, seconds, interval_s)
    finally:
        if owned and not keep:
            await asyncio.to_thread(stop)


async def _scenario(  # noqa: PLR0915 - one scenario, step by step
    cluster: Cluster, devices: int, seconds: float, interval_s: float
) -> Outcome:
    pg = _pg_conninfo(cluster.pg_url)
    gw0 = await leader(cluster.gateways)
    ids = [f"cl-{i:04d}" for i in range(devices)]
    say(f"provisioning {devices} devices through {gw0.url}")
    creds = await provision_devices(gw0.url + "/api/v1", cluster.token, ids, concurrency=4)
    ports = cluster.spec.mqtts_ports()
    alternates = tuple(("localhost", p) for p in ports)
    rng = random.Random(3)  # noqa: S311
    creds = [
        replace(c, host="localhost", port=ports[i % len(ports)], alternates=alternates)
        for i, c in enumerate(creds)
    ]
    profile = DeviceProfile(
        interval_s=interval_s, track_acks=True, reconnect_min_s=0.5, reconnect_max_s=4.0,
        keepalive_s=10, ota=False,
    )  # fmt: skip
    gate = asyncio.Semaphore(20)
    fleet = [SimDevice(c, profile, connect_gate=gate, seed=rng.randrange(1 << 30)) for c in creds]
    say(f"{devices} devices streaming QoS 1 telemetry over TLS every {interval_s:g} s")
    for d in fleet:
        await d.start()
    stop_commands = asyncio.Event()
    sent: list[str] = []
    commander = asyncio.create_task(
        _commands_loop(cluster, ids, sent, stop_commands, max(0.2, 20 / devices))
    )
    try:
        await asyncio.sleep(min(8.0, seconds / 6))
        threshold = await _median_temperature(pg)
        async with httpx.AsyncClient(
            timeout=10, headers={"Authorization": f"Bearer {cluster.token}"}
        ) as client:
            gw = await leader(cluster.gateways)
            r = await client.put(
                f"{gw.url}/api/v1/rules/{RULE_ID}",
                json={
                    "id": RULE_ID, "devices": "*", "reading": "temperature", "op": ">",
                    "threshold": threshold, "action": "lamp.on", "args": {"seconds": 1},
                    "cooldown_s": RULE_COOLDOWN_S, "stale_after_s": 3600,
                },
            )  # fmt: skip
            say(f"rule {RULE_ID}: temperature > {threshold:.2f} -> lamp.on, cooldown "
                f"{RULE_COOLDOWN_S} s ({r.status_code})")  # fmt: skip
        step = seconds / 6
        await asyncio.sleep(step)
        victim = await leader(cluster.gateways)
        say(f"kill -9 gateway {victim.index} (the lease holder, pid {victim.pid})")
        gateway_kill(victim)
        await asyncio.sleep(step)
        node = cluster.nodes[1]
        say(f"kill -9 RabbitMQ node {node.name} (pid {node.beam_pid()})")
        node.kill9()
        await asyncio.sleep(step)
        say(f"restart gateway {victim.index}")
        gateway_start(victim)
        cluster.save()
        await asyncio.sleep(step)
        say(f"RabbitMQ node {node.name} comes back")
        node.start()
        await asyncio.to_thread(node.wait_ready, 240, len(cluster.nodes))
        await asyncio.sleep(step)
    finally:
        stop_commands.set()
        await commander
        say("stopping telemetry; waiting for every PUBACK and for the commands to end")
        for d in fleet:
            d.go_silent()
        await asyncio.gather(*(d.wait_acked(20) for d in fleet))
    # wait until the queues are drained and every command ended (or nothing moves for 20 s)
    deadline = time.monotonic() + 120
    outcome = await _count(pg, fleet, sent, RULE_COOLDOWN_S * 1000)
    still_since, last = time.monotonic(), (outcome.stored, outcome.commands_final)
    while time.monotonic() < deadline and (outcome.lost or outcome.commands_final < len(sent)):
        await asyncio.sleep(2)
        outcome = await _count(pg, fleet, sent, RULE_COOLDOWN_S * 1000)
        now = (outcome.stored, outcome.commands_final)
        if now != last:
            still_since, last = time.monotonic(), now
        elif time.monotonic() - still_since > 20:
            break
    if outcome.lost:
        say(f"lost (device, seq): {sorted(outcome.lost_keys)[:20]}")
    if outcome.not_final:
        say(f"commands not final (id, state in the store): {list(outcome.not_final)}")
    for d in fleet:
        await d.stop()
    say(
        f"telemetry: {outcome.acked} PUBACKed, {outcome.stored} stored; commands "
        f"{dict(outcome.final_states)}, run twice: {outcome.commands_run_twice}; "
        f"rule fires: {outcome.rule_fires}"
    )
    return outcome


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for noisy in ("gmqtt", "asyncio", "planty_broker.simulator"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    ap = argparse.ArgumentParser(prog="bin/cluster", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_start = sub.add_parser("start")
    p_start.add_argument("--gateways", type=int, default=2)
    sub.add_parser("stop")
    sub.add_parser("status")
    p_check = sub.add_parser("check")
    p_check.add_argument("--devices", type=int, default=100)
    p_check.add_argument("--gateways", type=int, default=2)
    p_check.add_argument("--seconds", type=float, default=90.0)
    p_check.add_argument("--interval", type=float, default=2.0, help="telemetry every N s")
    p_check.add_argument("--keep", action="store_true", help="leave the set-up running")
    args = ap.parse_args(argv)
    if args.cmd == "start":
        asyncio.run(start(args.gateways))
        return 0
    if args.cmd == "stop":
        stop()
        return 0
    if args.cmd == "status":
        asyncio.run(status())
        return 0
    outcome = asyncio.run(
        check(args.devices, args.gateways, args.seconds, args.interval, args.keep)
    )
    print(outcome.line(), flush=True)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
