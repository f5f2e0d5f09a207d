"""TLS on every device listener (issue 13): TLS 1.2 and 1.3 only, Mozilla's "intermediate"
ciphers only. Checked with a real scanner (sslscan, Debian's package, installed by
`bin/setup --dev`) against a live supervised Mosquitto, and with Python's TLS client."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from planty_broker.mqttserver.files import CIPHERS_TLS12, CIPHERS_TLS13
from planty_broker.mqttserver.pki import Pki, issue_client_cert
from planty_broker.mqttserver.supervisor import MosquittoSupervisor
from tests.integration.mqttserver.conftest import make_layout, provider, searchable_tmpdir

pytestmark = pytest.mark.integration

ALLOWED = set(CIPHERS_TLS12.split(":")) | set(CIPHERS_TLS13.split(":"))
# Offered by OpenSSL's defaults and accepted before the policy (sslscan, 2026-12-03): CBC
# with SHA-1 or SHA-2 MACs, no AEAD.
WEAK = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256"


@dataclass
class Scan:
    protocols: dict[str, bool]
    ciphers: dict[str, set[str]]  # version -> accepted ciphers


async def sslscan(port: int) -> Scan:
    binary = shutil.which("sslscan")
    if binary is None:
        pytest.skip("sslscan is not installed (bin/setup --dev installs it)")
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--xml=-",
        "--no-colour",
        "--no-heartbleed",
        f"localhost:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    root = ET.fromstring(out)
    test = root.find("ssltest")
    assert test is not None, out.decode()
    protocols = {
        f"{p.get('type')}{p.get('version')}": p.get("enabled") == "1"
        for p in test.iter("protocol")
    }
    ciphers: dict[str, set[str]] = {}
    for c in test.iter("cipher"):
        ciphers.setdefault(c.get("sslversion", "?"), set()).add(c.get("cipher", "?"))
    return Scan(protocols, ciphers)


@dataclass
class Listeners:
    supervisor: MosquittoSupervisor
    token_port: int
    x509_port: int
    pki: Pki


@pytest.fixture(scope="module")
async def listeners() -> AsyncIterator[Listeners]:
    data_dir = searchable_tmpdir()
    try:
        async with MosquittoSupervisor(
            make_layout(data_dir, pick_x509=True), provider({})
        ) as mqtt:
            yield Listeners(mqtt, mqtt.layout.port, mqtt.layout.x509_port, mqtt.pki)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.parametrize("which", ["token", "x509"])
async def test_sslscan_finds_only_tls_1_2_and_1_3_and_no_weak_cipher(
    listeners: Listeners, which: str
) -> None:
    port = listeners.token_port if which == "token" else listeners.x509_port
    scan = await sslscan(port)
    assert scan.protocols == {
        "ssl2": False,
        "ssl3": False,
        "tls1.0": False,
        "tls1.1": False,
        "tls1.2": True,
        "tls1.3": True,
    }
    accepted = set().union(*scan.ciphers.values())
    assert accepted, "sslscan found no cipher at all"
    assert accepted <= ALLOWED, f"outside Mozilla intermediate: {accepted - ALLOWED}"
    assert set(scan.ciphers) <= {"TLSv1.2", "TLSv1.3"}
    if which == "token":  # the X.509 listener ends a TLS 1.2 scan at its certificate request
        assert scan.ciphers["TLSv1.2"] == {
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        }
    assert scan.ciphers["TLSv1.3"] == set(CIPHERS_TLS13.split(":"))


def _client(pki: Pki, ciphers: str, tmp_path: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pki.ca_pem())
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    cert, key = issue_client_cert(pki, "dev-tls", 1)
    (tmp_path / "c.pem").write_text(cert + key)
    ctx.load_cert_chain(tmp_path / "c.pem")
    return ctx


async def test_the_x509_listener_refuses_weak_tls_1_2_ciphers_from_a_real_device(
    listeners: Listeners, tmp_path: Path
) -> None:
    """What sslscan cannot see past the certificate request: a client with a valid
    certificate offering only CBC ciphers is refused, one offering AES-GCM is served."""
    port = listeners.x509_port
    weak = _client(listeners.pki, WEAK, tmp_path)
    with pytest.raises(ssl.SSLError):
        await asyncio.open_connection("localhost", port, ssl=weak)
    good = _client(listeners.pki, "ECDHE-ECDSA-AES128-GCM-SHA256", tmp_path)
    _, w = await asyncio.open_connection("localhost", port, ssl=good)
    assert w.get_extra_info("ssl_object").cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    w.close()
