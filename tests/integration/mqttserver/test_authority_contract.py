"""One contract, three adapters: registering, revoking, rotating and kicking work the same
through the memory fake, the supervised Mosquitto and the RabbitMQ cluster (issue 15).

Each adapter gets the same desired state through `set_source` + `apply()`; a real server
is asked with real device logins over TLS (what a device does), the fake with `accepts`.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from planty_broker.mqttserver.authority import MosquittoAuthority
from planty_broker.mqttserver.passwords import new_token
from planty_broker.mqttserver.rabbit_authority import RabbitAuthority, filter_regex
from planty_broker.mqttserver.rabbit_nodes import ADMIN_USER
from planty_broker.ports.device_authority import (
    Account,
    AclGrant,
    DesiredAccess,
    DeviceAuthority,
    DeviceEndpoint,
    IssuedCertificate,
)
from planty_broker.ports.memory_authority import MemoryDeviceAuthority
from tests.integration.mqttserver.clients import TestClient, cert_tls, device_tls
from tests.integration.mqttserver.conftest import make_layout, searchable_tmpdir
from tests.rabbitcluster import PrivateRabbit

pytestmark = pytest.mark.integration


@dataclass
class Desired:
    devices: dict[str, str] = field(default_factory=dict)
    accounts: tuple[Account, ...] = ()
    revoked: set[int] = field(default_factory=set)
    certified: set[str] = field(default_factory=set)

    def __call__(self) -> DesiredAccess:
        return DesiredAccess(
            dict(self.devices), self.accounts, frozenset(self.revoked), frozenset(self.certified)
        )


class Session:
    """A logged-in device; `cut()` waits until the server ended it (True) or not (False)."""

    def __init__(self, cut: Callable[[float], Awaitable[bool]], client: TestClient | None) -> None:
        self._cut = cut
        self.client = client

    async def cut(self, timeout: float = 5.0) -> bool:
        return await self._cut(timeout)


CertLogin = Callable[[str, IssuedCertificate], Awaitable[Session | None]]


@dataclass
class Harness:
    authority: DeviceAuthority
    desired: Desired
    login: Callable[[str, str], Awaitable[Session | None]]
    real: bool
    cert_login: CertLogin | None = None  # a device logging in with its certificate alone


async def _real_login(
    endpoint: DeviceEndpoint, user: str, secret: str, cert: IssuedCertificate | None = None
) -> Session | None:
    """A device's login: with its token, or (`cert`) with its certificate alone on the
    X.509 listener (no username, no password)."""
    assert endpoint.ca_pem
    if cert is None:
        client = TestClient(user, user, secret)
        port, tls = endpoint.port, device_tls(endpoint.ca_pem)
    else:
        client = TestClient(user, None, None)
        port, tls = endpoint.x509_port, cert_tls(endpoint.ca_pem, cert.cert_pem, cert.key_pem)
    try:
        await client.connect("localhost", port, tls)
    except Exception:
        await client.close()
        return None
    await asyncio.sleep(0.2)  # a refused CONNACK may close right after the connect returns
    if client.disconnected.is_set():
        await client.close()
        return None

    async def cut(timeout: float) -> bool:
        try:
            await asyncio.wait_for(client.disconnected.wait(), timeout)
        except TimeoutError:
            await client.close()
            return False
        await client.close()
        return True

    return Session(cut, client)


def _memory_harness() -> Harness:
    auth = MemoryDeviceAuthority()
    desired = Desired()
    auth.set_source(desired)

    async def login(user: str, secret: str) -> Session | None:
        if not auth.accepts(user, secret):
            return None
        kicks_at_login = len(auth.kicks)

        async def cut(timeout: float) -> bool:
            kicked = any(u == user for u, _ in auth.kicks[kicks_at_login:])
            return kicked or not auth.accepts(user, secret)

        return Session(cut, None)

    return Harness(auth, desired, login, real=False)


_rabbit: list[PrivateRabbit] = []  # started by the first RabbitMQ case, stopped at the end


@pytest.fixture(scope="module", autouse=True)
def _stop_rabbit() -> Iterator[None]:
    yield
    while _rabbit:
        _rabbit.pop().stop()


async def _rabbit_node() -> PrivateRabbit:
    if not _rabbit:
        _rabbit.append(await asyncio.to_thread(PrivateRabbit, 1))
    return _rabbit[0]


@pytest.fixture(params=["memory", "mosquitto", "rabbitmq"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    kind = request.param
    if kind == "memory":
        yield _memory_harness()
        return
    desired = Desired()
    if kind == "mosquitto":
        data_dir = searchable_tmpdir()
        auth = MosquittoAuthority(make_layout(data_dir, pick_x509=True))
        auth.set_source(desired)
        try:
            async with auth:

                async def login(user: str, secret: str) -> Session | None:
                    return await _real_login(auth.endpoint, user, secret)

                async def cert_login(user: str, cert: IssuedCertificate) -> Session | None:
                    return await _real_login(auth.endpoint, user, "", cert)

                yield Harness(auth, desired, login, real=True, cert_login=cert_login)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        return
    cluster = await _rabbit_node()
    spec = cluster.spec
    port = spec.nodes[0].mqtts
    endpoint = DeviceEndpoint("localhost", port, True, cluster.ca_pem, port)
    rauth = RabbitAuthority(
        spec.management_urls(),
        ADMIN_USER,
        spec.admin_password,
        endpoint,
        secret_dir=cluster.dir,
        pki=cluster.pki,
        crl_dir=cluster.crl_dir,
    )
    rauth.set_source(desired)
    async with rauth:
        await rauth.apply()  # the first apply syncs with the server (removes leftovers)

        async def rlogin(user: str, secret: str) -> Session | None:
            return await _real_login(endpoint, user, secret)

        async def rcert_login(user: str, cert: IssuedCertificate) -> Session | None:
            return await _real_login(endpoint, user, "", cert)

        yield Harness(rauth, desired, rlogin, real=True, cert_login=rcert_login)
        desired.devices.clear()
        desired.certified.clear()
        desired.accounts = ()
        await rauth.apply()


async def test_register_rotate_revoke_and_kick_work_the_same_on_every_adapter(
    harness: Harness,
) -> None:
    auth, desired = harness.authority, harness.desired
    t1, t2 = new_token(), new_token()
    dev = f"dev-{new_token()[:6].lower().replace('_', 'x').replace('-', 'y')}"

    # register: the device logs in with its token, not with another
    desired.devices[dev] = auth.hash_secret(t1)
    await auth.apply()
    assert auth.verify_secret(t1, desired.devices[dev])
    assert not auth.verify_secret(t2, desired.devices[dev])
    assert await harness.login(dev, t2) is None
    session = await harness.login(dev, t1)
    assert session is not None

    # rotate: the new token logs in, the old one no more, its live session is cut
    desired.devices[dev] = auth.hash_secret(t2)
    await auth.apply()
    assert await session.cut()
    assert await harness.login(dev, t1) is None
    session = await harness.login(dev, t2)
    assert session is not None

    # kick: the live session ends, the credential stays valid
    await auth.kick(dev)
    assert await session.cut()
    session = await harness.login(dev, t2)
    assert session is not None

    # revoke: gone, and its live session with it
    del desired.devices[dev]
    await auth.apply()
    assert await session.cut()
    assert await harness.login(dev, t2) is None


async def test_a_certificate_logs_in_until_it_is_retired_or_revoked(harness: Harness) -> None:
    """Issued, a certificate logs in alone (CN = the device); a password login as a
    certificate-only device is refused; a rotated-away certificate is refused while the
    new one logs in; a token added beside a certificate leaves its session alone; revoked,
    the live session ends and neither certificate logs in."""
    if harness.cert_login is None:
        pytest.skip("certificates are the server's: the fake checks none")
    auth, desired, cert_login = harness.authority, harness.desired, harness.cert_login
    dev = f"crt-{new_token()[:6].lower().replace('_', 'x').replace('-', 'y')}"
    first = await auth.issue_certificate(dev, 2)
    desired.certified.add(dev)
    await auth.apply()
    session = await cert_login(dev, first)
    assert session is not None, "an issued certificate was refused"
    assert await harness.login(dev, new_token()) is None

    # rotated to a new certificate: the old one is retired (CRL) and its session cut
    second = await auth.issue_certificate(dev, 2)
    desired.revoked.add(first.serial)
    await auth.kick(dev)
    assert await session.cut()
    assert await cert_login(dev, first) is None, "a retired certificate logged in"
    session = await cert_login(dev, second)
    assert session is not None

    # a token beside it (a rotation to a token, in its overlap): both log in
    token = new_token()
    desired.devices[dev] = auth.hash_secret(token)
    await auth.apply()
    assert not await session.cut(1.0), "adding a token cut the certificate session"
    token_session = await harness.login(dev, token)
    assert token_session is not None
    assert token_session.client is not None
    await token_session.client.close()

    # revoked: every credential ends, the live session with them
    del desired.devices[dev]
    desired.certified.discard(dev)
    desired.revoked.add(second.serial)
    await auth.kick(dev)
    assert await session.cut()
    assert await cert_login(dev, second) is None
    assert await harness.login(dev, token) is None


async def test_an_account_with_grants_logs_in_only_while_it_has_a_verifier(
    harness: Harness,
) -> None:
    auth, desired = harness.authority, harness.desired
    secret = new_token()
    grants = (AclGrant("deny", "planty/v1/devices/#"), AclGrant("write", "planty/v1/claim/x/req"))
    desired.accounts = (Account("planty-claim-9", grants),)
    await auth.apply()
    assert await harness.login("planty-claim-9", secret) is None
    desired.accounts = (Account("planty-claim-9", grants, auth.hash_secret(secret)),)
    await auth.apply()
    session = await harness.login("planty-claim-9", secret)
    assert session is not None
    desired.accounts = (Account("planty-claim-9", grants),)
    await auth.kick("planty-claim-9")
    assert await session.cut()
    assert await harness.login("planty-claim-9", secret) is None


async def test_a_device_cannot_reach_another_devices_topics(harness: Harness) -> None:
    if not harness.real:
        pytest.skip("confinement is the server's: the fake enforces nothing")
    auth, desired = harness.authority, harness.desired
    ta, tb = new_token(), new_token()
    desired.devices.update({"conf-a": auth.hash_secret(ta), "conf-b": auth.hash_secret(tb)})
    await auth.apply()
    a = await harness.login("conf-a", ta)
    b = await harness.login("conf-b", tb)
    assert a is not None and a.client is not None and b is not None and b.client is not None
    try:
        assert await a.client.subscribe("planty/v1/devices/conf-a/cmd") == (1,)
        # conf-b may not listen on conf-a's tree: refused (Mosquitto grants the SUBACK but
        # delivers nothing, RabbitMQ refuses it or closes the connection)
        try:
            await b.client.subscribe("planty/v1/devices/conf-a/#")
        except TimeoutError:
            pass
        # conf-b publishing into conf-a's tree never reaches conf-a
        if not b.client.disconnected.is_set():
            b.client.publish("planty/v1/devices/conf-a/cmd", b"spoof")
        a.client.publish("planty/v1/devices/conf-a/cmd", b"own")
        got = await a.client.next_message()
        assert got == ("planty/v1/devices/conf-a/cmd", b"own")
        with pytest.raises(TimeoutError):
            await a.client.next_message(timeout=1.0)
        assert b.client.messages.empty()
    finally:
        await a.client.close()
        await b.client.close()


def test_mqtt_filters_become_routing_key_patterns() -> None:
    import re

    rx = re.compile(filter_regex("planty/v1/claim/+/req"))
    assert rx.match("planty.v1.claim.abc.req")
    assert not rx.match("planty.v1.claim.abc.req.x")
    assert not rx.match("planty.v1.claim.a.b.req")
    everything = re.compile(filter_regex("planty/v1/devices/#"))
    assert everything.match("planty.v1.devices.x.telemetry")
    assert everything.match("planty.v1.devices")
    assert not everything.match("planty.v1.devicesx")
