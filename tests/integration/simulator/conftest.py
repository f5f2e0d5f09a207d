"""A real Mosquitto (plain TCP, and TLS with a CA made here) and a raw broker-side MQTT client."""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import ipaddress
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gmqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gmqtt.mqtt.constants import MQTTv311

from planty_broker.protocol import Channel, Command, Topics, encode
from planty_broker.simulator.profile import DeviceCredentials
from tests.conftest import free_port

MOSQUITTO = "/usr/sbin/mosquitto"


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    ca_pem: str | None = None

    def credentials(self, device_id: str) -> DeviceCredentials:
        return DeviceCredentials(
            device_id=device_id,
            token="not-checked-here",
            host=self.host,
            port=self.port,
            tls=self.ca_pem is not None,
            ca_pem=self.ca_pem,
        )


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port}: {log.read_text()}")


class MosquittoProcess:
    """A Mosquitto child on a fixed loopback port that a test may stop, restart, freeze, thaw.

    `listener_extra` is appended after the one listener line (e.g. its TLS settings).
    """

    def __init__(self, folder: Path, listener_extra: str = "") -> None:
        self.port = free_port()
        self.log = folder / "mosquitto.log"
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"user {getpass.getuser()}\n"
            "persistence false\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_queued_messages 100000\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n" + listener_extra
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_port(self.port, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A plain-TCP Mosquitto on loopback, anonymous, shared by the simulator tests."""
    mosquitto = MosquittoProcess(tmp_path_factory.mktemp("mosquitto"))
    mosquitto.start()
    yield Broker("127.0.0.1", mosquitto.port)
    mosquitto.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A Mosquitto for one test only, which the test may stop, restart or freeze."""
    mosquitto = MosquittoProcess(tmp_path)
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="session")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A Mosquitto with only a TLS listener (server cert for localhost/127.0.0.1) and its CA."""
    folder = tmp_path_factory.mktemp("mosquitto-tls")
    ca_key, ca = make_ca("Simulator test CA")
    key, cert = make_server_cert(ca_key, ca)
    (folder / "ca.pem").write_text(pem(ca))
    (folder / "server.pem").write_text(pem(cert))
    (folder / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls = (
        f"cafile {folder / 'ca.pem'}\ncertfile {folder / 'server.pem'}\n"
        f"keyfile {folder / 'server.key'}\ntls_version tlsv1.2\n"
    )
    mosquitto = MosquittoProcess(folder, tls)
    mosquitto.start()
    yield Broker("127.0.0.1", mosquitto.port, ca_pem=pem(ca))
    mosquitto.stop()


@dataclass(frozen=True)
class Msg:
    device_id: str
    channel: Channel
    payload: bytes
    retain: bool


class Observer:
    """The broker side, as a bare MQTT client: records device traffic and sends commands."""

    def __init__(self, broker: Broker, topics: Topics) -> None:
        self.topics = topics
        self.messages: list[Msg] = []
        self._broker = broker
        self._arrived = asyncio.Event()
        self._client = gmqtt.Client(f"observer-{uuid.uuid4().hex[:8]}")
        self._client.on_message = self._on_message

    def _on_message(
        self, _c: object, topic: str, payload: bytes, _qos: int, props: dict[str, object]
    ) -> None:
        parsed = self.topics.parse(topic)
        self.messages.append(
            Msg(parsed.device_id, parsed.channel, payload, bool(props.get("retain")))
        )
        self._arrived.set()

    async def start(self) -> None:
        await self._client.connect(self._broker.host, self._broker.port, version=MQTTv311)
        self._client.subscribe(self.topics.device_tree("+"), qos=1)
        await asyncio.sleep(0.05)  # SUBACK

    async def stop(self) -> None:
        await self._client.disconnect()

    def of(self, device_id: str, channel: Channel) -> list[Msg]:
        return [m for m in self.messages if m.device_id == device_id and m.channel == channel]

    async def wait_for(self, predicate: Callable[[Msg], bool], timeout: float = 5.0) -> Msg:
        """The first recorded message (past or future) matching `predicate`."""
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for msg in self.messages[seen:]:
                    if predicate(msg):
                        return msg
                seen = len(self.messages)
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_count(
        self, device_id: str, channel: Channel, count: int, timeout: float = 5.0
    ) -> list[Msg]:
        async with asyncio.timeout(timeout):
            while len(self.of(device_id, channel)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.of(device_id, channel)

    def send(self, device_id: str, cmd: Command) -> None:
        self._client.publish(self.topics.device(device_id, Channel.CMD), encode(cmd), qos=1)


@pytest.fixture
def topics() -> Topics:
    """A topic prefix of its own for every test, so retained messages never leak between tests."""
    return Topics(f"t{uuid.uuid4().hex[:10]}/v1")


@pytest.fixture
async def observer(broker: Broker, topics: Topics) -> AsyncIterator[Observer]:
    obs = Observer(broker, topics)
    await obs.start()
    yield obs
    await obs.stop()
