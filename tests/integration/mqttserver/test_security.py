"""Security of the supervised Mosquitto, proved with real clients over real TLS."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
from pathlib import Path

import pytest
from gmqtt.mqtt.handler import MQTTConnectError

from planty_broker.mqttserver.layout import GATEWAY_USERNAME
from planty_broker.mqttserver.passwords import hash_token
from planty_broker.mqttserver.pki import ensure_pki
from planty_broker.mqttserver.probe import mqtt_connect
from planty_broker.protocol import Channel, Topics
from tests.integration.mqttserver.clients import TestClient, device_tls
from tests.integration.mqttserver.conftest import OBSERVER, Server

pytestmark = pytest.mark.integration

T = Topics("planty/v1")


async def device(server: Server, device_id: str, client_id: str | None = None) -> TestClient:
    c = TestClient(client_id or device_id, device_id, server.tokens[device_id])
    await c.connect("localhost", server.layout.port, device_tls(server.supervisor.ca_pem))
    return c


async def observer(server: Server) -> TestClient:
    host, port = server.supervisor.internal_url
    c = TestClient(OBSERVER, OBSERVER, server.observer_password)
    await c.connect(host, port)
    return c


async def test_device_with_its_token_connects_over_tls_and_talks_on_its_own_topics(
    server: Server,
) -> None:
    a = await device(server, "dev-a")
    try:
        assert await a.subscribe(T.device("dev-a", Channel.CMD)) == (1,)
        a.publish(T.device("dev-a", Channel.CMD), b"hello")
        assert await a.next_message() == (T.device("dev-a", Channel.CMD), b"hello")
    finally:
        await a.close()


async def test_mosquitto_accepts_a_password_hashed_by_hash_token(server: Server) -> None:
    token = "a-token-only-this-test-knows"
    await server.supervisor.update_users({**server.hashes, "dev-new": hash_token(token)})
    try:
        host, port = server.supervisor.internal_url
        assert await mqtt_connect(host, port, "dev-new", token) == 0
        assert await mqtt_connect(host, port, "dev-new", token + "x") == 5
    finally:
        await server.supervisor.update_users(server.hashes)


async def test_tls_verification_is_real(server: Server, tmp_path: Path) -> None:
    port = server.layout.port
    good = device_tls(server.supervisor.ca_pem)
    # Right CA, wrong host name: refused by the client's hostname check.
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch|doesn.t match"):
        await asyncio.open_connection("127.0.0.1", port, ssl=good, server_hostname="not-us.test")
    # Another CA (another broker's): refused.
    other = ensure_pki(tmp_path / "other", ["localhost"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection("localhost", port, ssl=device_tls(other.ca_pem()))
    # Our CA, by name and by loopback address: accepted, TLS 1.2 or newer.
    for host in ("localhost", "127.0.0.1"):
        _, writer = await asyncio.open_connection(host, port, ssl=good)
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
async def test_tls_listener_refuses_tls_1_1(server: Server) -> None:
    ctx = device_tls(server.supervisor.ca_pem)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let our side offer TLS 1.1 at all
    ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    # The refusal comes from Mosquitto (a protocol_version alert), not from our side.
    with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):
        await asyncio.open_connection("localhost", server.layout.port, ssl=ctx)


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("dev-a", "wrong-token"),
        ("dev-a", ""),
        ("dev-unknown", "whatever"),
        ("dev-b", "TOKEN-OF-dev-a"),  # another device's valid token
        (GATEWAY_USERNAME, "guess"),
    ],
)
async def test_wrong_credentials_are_refused(server: Server, username: str, password: str) -> None:
    if password == "TOKEN-OF-dev-a":
        password = server.tokens["dev-a"]
    c = TestClient(username, username, password)
    with pytest.raises(MQTTConnectError, match="code 5"):
        await c.connect("localhost", server.layout.port, device_tls(server.supervisor.ca_pem))
    await c.close()


async def test_anonymous_login_is_refused(server: Server) -> None:
    c = TestClient("anon", "", "")
    c.client._username = None  # no username at all
    c.client._password = None
    with pytest.raises(MQTTConnectError, match="code 5"):
        await c.connect("localhost", server.layout.port, device_tls(server.supervisor.ca_pem))
    await c.close()


async def test_device_cannot_publish_into_another_devices_topics(server: Server) -> None:
    a, b, obs = await device(server, "dev-a"), await device(server, "dev-b"), await observer(server)
    try:
        await a.subscribe(T.device("dev-a", Channel.CMD))
        await obs.subscribe("planty/v1/devices/#")
        marker = (T.device("dev-b", Channel.TELEMETRY), b"marker")
        await b.subscribe(marker[0])

        b.publish(T.device("dev-a", Channel.CMD), b'{"id":"evil","action":"pump.on"}')
        b.publish(T.device("dev-a", Channel.STATUS), b'{"online":false}')
        b.publish("planty/v1/elsewhere", b"nope")
        b.publish(*marker)

        # b's marker reached b and the privileged observer: b's earlier publishes were
        # handled before it, and none of them was let through to anyone.
        assert await b.receive_until(*marker) == [marker]
        assert await obs.receive_until(*marker) == [marker]
        await asyncio.sleep(0.3)
        assert a.messages.empty()
        # And a's own messages do get through, so the silence above is the ACL.
        a.publish(T.device("dev-a", Channel.CMD), b"mine")
        assert await a.next_message() == (T.device("dev-a", Channel.CMD), b"mine")
    finally:
        for c in (a, b, obs):
            await c.close()


async def test_device_cannot_subscribe_to_another_devices_topics(server: Server) -> None:
    a, b = await device(server, "dev-a"), await device(server, "dev-b")
    try:
        granted = [
            await b.subscribe(T.device("dev-a", Channel.TELEMETRY)),
            await b.subscribe("planty/v1/devices/+/telemetry"),
            await b.subscribe("#"),
        ]
        # Mosquitto 2.0 grants wildcard subscriptions and filters each message by ACL.
        assert all(len(g) == 1 for g in granted)
        marker = (T.device("dev-b", Channel.TELEMETRY), b"marker")
        await b.subscribe(marker[0])

        await a.subscribe(T.device("dev-a", Channel.STATUS))
        a.publish(T.device("dev-a", Channel.TELEMETRY), b'{"seq":1,"readings":{}}')
        a.publish(T.device("dev-a", Channel.STATUS), b'{"online":true}')
        await a.receive_until(T.device("dev-a", Channel.STATUS), b'{"online":true}')
        # a's messages were routed before a got its own back; b's queue is FIFO, so a
        # message for b from a would sit before b's own marker.
        b.publish(*marker)
        assert await b.receive_until(*marker) == [marker]
    finally:
        await a.close()
        await b.close()


async def test_device_cannot_take_over_another_devices_client_id(server: Server) -> None:
    a = await device(server, "dev-a")
    try:
        # b logs in with its own token but a's client id: the id is replaced by b's name.
        b1 = await device(server, "dev-b", client_id="dev-a")
        await asyncio.sleep(0.5)
        assert not a.disconnected.is_set()
        await a.subscribe(T.device("dev-a", Channel.ACK))
        a.publish(T.device("dev-a", Channel.ACK), b"still here")
        assert await a.next_message() == (T.device("dev-a", Channel.ACK), b"still here")
        # The forced id is "dev-b": a second dev-b login (any id) replaces the first.
        b2 = await device(server, "dev-b", client_id="something-else")
        await asyncio.wait_for(b1.disconnected.wait(), 5)
        assert not a.disconnected.is_set()
        await b1.close()
        await b2.close()
    finally:
        await a.close()


async def test_plaintext_loopback_device_listener_works_only_on_loopback(server: Server) -> None:
    c = TestClient("dev-c", "dev-c", server.tokens["dev-c"])
    await c.connect("127.0.0.1", server.layout.plaintext_loopback_port)
    try:
        assert await c.subscribe(T.device("dev-c", Channel.CMD)) == (1,)
    finally:
        await c.close()


def _listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by `pid`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints the address as 32-bit little-endian words
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            found.add((str(ipaddress.ip_address(words)), int(port_hex, 16)))
    return found


async def test_only_the_tls_listener_is_reachable_from_the_network(server: Server) -> None:
    pid = server.supervisor.pid
    assert pid is not None
    layout = server.layout
    listening = _listening_sockets(pid)
    assert listening == {
        ("0.0.0.0", layout.port),
        ("127.0.0.1", layout.internal_port),
        ("127.0.0.1", layout.plaintext_loopback_port),
    }
    plaintext = {layout.internal_port, layout.plaintext_loopback_port}
    assert all(addr == "127.0.0.1" for addr, port in listening if port in plaintext)
    # The network-facing port does not speak plaintext MQTT.
    with pytest.raises((OSError, TimeoutError)):
        async with asyncio.timeout(3):
            await mqtt_connect("127.0.0.1", layout.port, "dev-a", server.tokens["dev-a"])


async def test_gateway_account_reads_every_device(server: Server) -> None:
    host, port = server.supervisor.internal_url
    gw = TestClient("ignored", GATEWAY_USERNAME, server.supervisor.gateway_password)
    await gw.connect(host, port)
    a = await device(server, "dev-a")
    try:
        await gw.subscribe(T.subscription(Channel.TELEMETRY))
        a.publish(T.device("dev-a", Channel.TELEMETRY), b"t1")
        assert await gw.next_message() == (T.device("dev-a", Channel.TELEMETRY), b"t1")
        gw.publish(T.device("dev-a", Channel.CMD), b"c1")  # and writes to any device
        await a.subscribe(T.device("dev-a", Channel.CMD))
        gw.publish(T.device("dev-a", Channel.CMD), b"c2")
        assert (await a.receive_until(T.device("dev-a", Channel.CMD), b"c2"))[-1][1] == b"c2"
    finally:
        await gw.close()
        await a.close()


async def test_runs_unprivileged_when_started_as_root(server: Server) -> None:
    if os.geteuid() != 0:
        pytest.skip("only meaningful as root")
    import pwd

    pid = server.supervisor.pid
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid == pwd.getpwnam("mosquitto").pw_uid
    # The CA key stays with us.
    assert (server.layout.pki_dir / "ca.key").stat().st_uid == 0
