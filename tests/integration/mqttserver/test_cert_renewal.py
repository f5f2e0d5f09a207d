"""Certificates never expire on a running gateway (issue 13): the supervisor's renewal loop,
on an injected clock, re-issues the server certificate 30 days ahead and the live Mosquitto
serves the new one; expiry is exported and warned about. Real Mosquitto, real TLS."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import DNSName
from cryptography.x509.verification import PolicyBuilder, Store

from planty_broker.mqttserver.supervisor import MosquittoSupervisor
from tests.integration.mqttserver.conftest import make_layout, provider, searchable_tmpdir

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.base = datetime.now(UTC)  # a base only: the test moves it
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return self.base + self.offset


async def served_certificate(port: int) -> x509.Certificate:
    """The certificate Mosquitto serves now (chain checked separately, at the test's time)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("localhost", port, ssl=ctx)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der)


def verifies_at(cert: x509.Certificate, ca_pem: str, when: datetime) -> bool:
    """What a device whose clock says `when` and that trusts `ca_pem` concludes."""
    store = Store(x509.load_pem_x509_certificates(ca_pem.encode()))
    verifier = PolicyBuilder().store(store).time(when).build_server_verifier(DNSName("localhost"))
    try:
        verifier.verify(cert, [])
    except Exception:
        return False
    return True


async def until(check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def data_dir() -> AsyncIterator[Path]:
    path = searchable_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_the_running_server_certificate_is_renewed_and_served(data_dir: Path) -> None:
    clock = Clock()
    layout = make_layout(data_dir)
    supervisor = MosquittoSupervisor(layout, provider({}), cert_check_s=0.1)
    supervisor.clock = clock
    async with supervisor as mqtt:
        port = mqtt.layout.port
        first = await served_certificate(port)
        expiry = mqtt.certificate_expiry()
        assert expiry["server"] == first.not_valid_after_utc.timestamp()
        assert expiry["ca"] > expiry["server"]
        assert mqtt.expiry_warnings() == []
        await asyncio.sleep(0.3)
        assert mqtt.certificate_renewals == 0  # not due: nothing happens

        clock.offset = timedelta(days=815)  # 10 days before it ends
        assert verifies_at(first, mqtt.ca_pem, clock())  # still valid, but due
        await until(lambda: mqtt.certificate_renewals == 1)
        renewed = await served_certificate(port)
        assert renewed.serial_number != first.serial_number  # Mosquitto serves the new one
        assert renewed.not_valid_after_utc > clock() + timedelta(days=800)
        assert verifies_at(renewed, mqtt.ca_pem, clock())
        assert not verifies_at(first, mqtt.ca_pem, clock() + timedelta(days=11))  # why
        assert mqtt.certificate_expiry()["server"] == renewed.not_valid_after_utc.timestamp()
        assert mqtt.expiry_warnings() == []
        await asyncio.sleep(0.3)
        assert mqtt.certificate_renewals == 1  # once per due certificate

        # The CA cannot renew itself: 30 days ahead it is warned about.
        ca_end = datetime.fromtimestamp(mqtt.certificate_expiry()["ca"], UTC)
        clock.offset = ca_end - clock.base - timedelta(days=20)
        await until(lambda: mqtt.certificate_renewals == 2)  # the server one is due again
        (warning,) = mqtt.expiry_warnings()
        assert warning.startswith("certificate ca expires in 20 days")
