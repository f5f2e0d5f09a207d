"""Running RabbitMQ nodes from Debian's `rabbitmq-server` on free ports (bin/cluster, tests).

Each node gets its own folder, node name, AMQP/distribution/management/MQTT-TLS ports,
Erlang cookie (shared by the nodes of one cluster, never the system's), config file and
plugins (`rabbitmq_mqtt`, `rabbitmq_management`, `rabbitmq_event_exchange`). The system
instance (5672/1883) is never touched. Nodes of one cluster find each other by
`classic_config` peer discovery.

    spec = ClusterSpec.new(base_dir, nodes=3, pki=pki)
    nodes = [RabbitNode(spec, i) for i in range(3)]
    for n in nodes: n.start()           # in parallel: classic_config forms the cluster
    for n in nodes: n.wait_ready()
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from planty_broker.errors import MqttServerError

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
PLUGINS = "rabbitmq_mqtt,rabbitmq_management,rabbitmq_event_exchange"
ADMIN_USER = "planty-admin"
# A channel on a quorum queue pipelines at most this many Raft commands (acks are `settle`
# commands) before it keeps further ones in its own memory until earlier ones are
# applied. Those kept back are dropped when the channel closes, and the queue hands their
# messages, already acked, to another consumer (RabbitMQ 3.10's default, 32, returned
# 25-527 of 1,000 acked messages in 7 of 16 closes: docs/scale-out.md). Above the most
# unacked deliveries a gateway's channel holds (`cluster.prefetch` x 2 queues), no ack is
# ever kept back, so a gateway's clean stop never sends a committed reading again.
QUORUM_COMMANDS_SOFT_LIMIT = 4096
ADVANCED_CONFIG = f"[{{rabbit, [{{quorum_commands_soft_limit, {QUORUM_COMMANDS_SOFT_LIMIT}}}]}}].\n"


def advanced_config(crl_dir: str = "", ca_cert: str = "", cert: str = "", key: str = "") -> str:
    """`advanced.config`: the soft limit, and with `crl_dir` the device CA's CRL check: the
    TLS options with `{crl_check, peer}` and a CRL cache that reads the CA's CRL from that
    folder at every handshake (`<hash>.r0`, written by the gateways: rabbit_pki.py).
    rabbitmq.conf has no key for `crl_cache`, and `ssl_options` given here replace those of
    rabbitmq.conf as a whole (measured: the node did not start, `no_cert`), so all of them
    are repeated here."""
    if not crl_dir:
        return ADVANCED_CONFIG
    tls = ", ".join(
        [
            f'{{cacertfile, "{ca_cert}"}}',
            f'{{certfile, "{cert}"}}',
            f'{{keyfile, "{key}"}}',
            "{verify, verify_peer}",
            "{fail_if_no_peer_cert, false}",
            "{crl_check, peer}",
            f'{{crl_cache, {{ssl_crl_hash_dir, {{internal, [{{dir, "{crl_dir}"}}]}}}}}}',
        ]
    )
    return (
        f"[{{rabbit, [{{quorum_commands_soft_limit, {QUORUM_COMMANDS_SOFT_LIMIT}}},\n"
        f"            {{ssl_options, [{tls}]}}]}}].\n"
    )


class RabbitNodeError(MqttServerError):
    """A RabbitMQ node could not be started or did not become ready."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class NodePorts:
    amqp: int
    dist: int
    management: int
    mqtts: int


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What every node of one cluster shares; saved as `cluster.json` in `base_dir`."""

    base_dir: str
    name: str  # node names are `<name>-<i>@localhost`
    cookie: str
    admin_password: str
    ca_cert: str
    server_cert: str
    server_key: str
    nodes: list[NodePorts] = field(default_factory=list)
    # Device certificates (CN = device id) log in on the MQTT-over-TLS listener; the CRL of
    # the CA is read from this folder at every handshake ("": no CRL check).
    crl_dir: str = ""

    @classmethod
    def new(
        cls,
        base_dir: Path,
        count: int,
        *,
        ca_cert: Path,
        server_cert: Path,
        server_key: Path,
        crl_dir: Path | None = None,
    ) -> ClusterSpec:
        ports = [
            NodePorts(free_port(), free_port(), free_port(), free_port()) for _ in range(count)
        ]
        return cls(
            str(base_dir),
            f"planty{ports[0].amqp}",
            secrets.token_hex(20).upper(),
            secrets.token_urlsafe(24),
            str(ca_cert),
            str(server_cert),
            str(server_key),
            ports,
            str(crl_dir or ""),
        )

    def save(self) -> None:
        path = Path(self.base_dir) / "cluster.json"
        path.write_text(json.dumps(asdict(self), indent=1))
        path.chmod(0o600)

    @classmethod
    def load(cls, base_dir: Path) -> ClusterSpec:
        data = json.loads((base_dir / "cluster.json").read_text())
        data["nodes"] = [NodePorts(**n) for n in data["nodes"]]
        return cls(**data)

    def node_name(self, i: int) -> str:
        return f"{self.name}-{i}@localhost"

    def amqp_urls(self) -> list[str]:
        pw = self.admin_password
        return [f"amqp://{ADMIN_USER}:{pw}@127.0.0.1:{n.amqp}/" for n in self.nodes]

    def management_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{n.management}" for n in self.nodes]

    def mqtts_ports(self) -> list[int]:
        return [n.mqtts for n in self.nodes]


class RabbitNode:
    """One node of a `ClusterSpec`: start (detached, own session), ready check, kill, stop."""

    def __init__(self, spec: ClusterSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.ports = spec.nodes[index]
        self.dir = Path(spec.base_dir) / f"node{index}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.node_name(self.index)

    def _config(self) -> str:
        s, p = self.spec, self.ports
        lines = [
            f"listeners.tcp.1 = 127.0.0.1:{p.amqp}",
            "management.tcp.ip = 127.0.0.1",
            f"management.tcp.port = {p.management}",
            "mqtt.listeners.tcp = none",
            f"mqtt.listeners.ssl.1 = 127.0.0.1:{p.mqtts}",
            "mqtt.allow_anonymous = false",
            "mqtt.exchange = amq.topic",
            "mqtt.vhost = /",
            f"ssl_options.cacertfile = {s.ca_cert}",
            f"ssl_options.certfile = {s.server_cert}",
            f"ssl_options.keyfile = {s.server_key}",
            # A device may present a client certificate from the CA (checked; CN = username,
            # no password) or log in with username and password (no certificate).
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
            "mqtt.ssl_cert_login = true",
            "ssl_cert_login_from = common_name",
            f"default_user = {ADMIN_USER}",
            f"default_pass = {s.admin_password}",
            "default_user_tags.administrator = true",
            "loopback_users = none",
            "cluster_formation.peer_discovery_backend = classic_config",
            "cluster_partition_handling = pause_minority",
            "disk_free_limit.absolute = 50MB",
            "vm_memory_high_watermark.relative = 0.2",
            "log.console = false",
            "log.file.level = warning",
        ]
        lines += [
            f"cluster_formation.classic_config.nodes.{i + 1} = {s.node_name(i)}"
            for i in range(len(s.nodes))
        ]
        return "\n".join(lines) + "\n"

    def env(self) -> dict[str, str]:
        p = self.ports
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.dir),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(p.amqp),
            RABBITMQ_DIST_PORT=str(p.dist),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_ENABLED_PLUGINS=PLUGINS,
            RABBITMQ_PID_FILE=str(self.dir / "rabbit.pid"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_USE_LONGNAME="false",
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def prepare(self) -> None:
        d = self.dir
        (d / "log").mkdir(parents=True, exist_ok=True)
        (d / "mnesia").mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(self._config())
        s = self.spec
        (d / "advanced.config").write_text(
            advanced_config(s.crl_dir, s.ca_cert, s.server_cert, s.server_key)
        )
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text(f"[{PLUGINS}].\n")
        cookie = d / ".erlang.cookie"
        if cookie.exists():
            cookie.chmod(0o600)
        cookie.write_text(self.spec.cookie)
        cookie.chmod(0o400)

    def start(self) -> None:
        """Start the node detached (its own session: it outlives whoever started it)."""
        if self.alive():
            return
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise RabbitNodeError(
                "rabbitmq-server is not installed; apt-get install rabbitmq-server"
            )
        self.prepare()
        out = (self.dir / "log" / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")],
            env=self.env(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        (self.dir / "launcher.pid").write_text(str(self.proc.pid))

    def beam_pid(self) -> int | None:
        """The Erlang VM's pid (what kill -9 must hit), from RABBITMQ_PID_FILE."""
        try:
            pid = int((self.dir / "rabbit.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def alive(self) -> bool:
        return self.beam_pid() is not None

    def api(self, path: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> Any:
        """One management API call on this node; JSON in and out."""
        url = f"http://127.0.0.1:{self.ports.management}{path}"
        auth = b64encode(f"{ADMIN_USER}:{self.spec.admin_password}".encode()).decode()
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Basic {auth}")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
        return json.loads(raw) if raw else None

    def wait_ready(self, timeout_s: float = 120.0, cluster_size: int = 0) -> None:
        """Until the management API answers and (if given) sees `cluster_size` running nodes."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RabbitNodeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.tail()}"
                )
            try:
                nodes = self.api("/api/nodes")
                running = [n for n in nodes if isinstance(n, dict) and n.get("running")]
                if len(running) >= cluster_size and self.listening():
                    return
                last = f"{len(running)} of {cluster_size} nodes running"
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise RabbitNodeError(
            f"{self.name} not ready after {timeout_s:.0f} s ({last}): {self.tail()}"
        )

    def listening(self) -> bool:
        """The AMQP and MQTT-over-TLS listeners accept connections (they open after the API)."""
        for port in (self.ports.amqp, self.ports.mqtts):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except OSError:
                return False
        return True

    def tail(self, lines: int = 15) -> str:
        logs = sorted((self.dir / "log").glob("*.log"))
        text = "".join(p.read_text(errors="replace")[-4000:] for p in logs)
        return " | ".join(text.strip().splitlines()[-lines:])

    def kill9(self) -> None:
        pid = self.beam_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self._reap()

    def stop(self, timeout_s: float = 30.0) -> None:
        pid = self.beam_pid()
        if pid is None:
            self._reap()
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.2)
        if self.alive():
            os.kill(pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        # erl_child_setup / inet_gethost / the disk monitor die with the VM's session
        launcher = self.dir / "launcher.pid"
        try:
            pgid = int(launcher.read_text())
            os.killpg(pgid, signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def wipe(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
