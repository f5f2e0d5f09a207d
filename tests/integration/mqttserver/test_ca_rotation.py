"""`planty pki rotate-ca` on a live Mosquitto (issue 13): at each step, TLS clients that trust
only the old CA, only the new one, or the bundle the gateway hands out; device certificates
from either CA on the X.509 listener. Real Mosquitto, real TLS, nothing mocked."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from planty_broker.mqttserver.errors import PkiError
from planty_broker.mqttserver.passwords import hash_token, new_token
from planty_broker.mqttserver.pki import build_crl, issue_client_cert
from planty_broker.mqttserver.supervisor import MosquittoSupervisor
from tests.integration.identity.conftest import tls, try_login
from tests.integration.mqttserver.conftest import make_layout, provider, searchable_tmpdir

pytestmark = pytest.mark.integration

TOKEN = new_token()


@pytest.fixture
async def data_dir() -> AsyncIterator[Path]:
    path = searchable_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def token_login(mqtt: MosquittoSupervisor, trusted_pem: str) -> str:
    """A token device that trusts exactly `trusted_pem` (one CA, or a bundle)."""
    return await try_login("localhost", mqtt.layout.port, tls(trusted_pem), "dev-a", TOKEN)


async def cert_login(mqtt: MosquittoSupervisor, cert: tuple[str, str], folder: Path) -> str:
    """An X.509 device with this certificate, trusting the bundle the gateway hands out."""
    (folder / "c.pem").write_text(cert[0])
    (folder / "c.key").write_text(cert[1])
    ctx = tls(mqtt.ca_pem, folder / "c.pem", folder / "c.key")
    return await try_login("localhost", mqtt.layout.x509_port, ctx, "ignored", None)


def refused(outcome: str) -> bool:
    return outcome.startswith("tls:")


async def test_devices_trust_both_cas_through_the_rotation(data_dir: Path, tmp_path: Path) -> None:
    layout = make_layout(data_dir, pick_x509=True)
    async with MosquittoSupervisor(layout, provider({"dev-a": hash_token(TOKEN)})) as mqtt:
        pki = mqtt.pki
        old = pki.ca_cert_path.read_text()
        assert mqtt.ca_pem == old and pki.ca_rotation_phase() == "none"
        old_device = issue_client_cert(pki, "dev-old", 30)
        assert await token_login(mqtt, old) == "accepted"
        assert await cert_login(mqtt, old_device, tmp_path) == "accepted"
        with pytest.raises(PkiError, match="start a CA rotation first"):
            await mqtt.rotate_ca("switch")

        # start: a new CA, trusted beside the old one; the old one still signs everything.
        assert await mqtt.rotate_ca("start") == "overlap"
        new = pki.next_ca_paths[0].read_text()
        assert mqtt.ca_pem == old + new  # what devices get now (GET /api/v1/mqtt ...)
        assert set(mqtt.certificate_expiry()) == {"server", "ca", "ca_next"}
        assert await token_login(mqtt, old) == "accepted"  # devices not yet updated
        assert refused(await token_login(mqtt, new))  # the server cert is still the old CA's
        assert await token_login(mqtt, old + new) == "accepted"
        assert await cert_login(mqtt, old_device, tmp_path) == "accepted"
        with pytest.raises(PkiError, match="under way"):
            await mqtt.rotate_ca("start")

        # switch: the new CA signs the server certificate and new device certificates.
        assert await mqtt.rotate_ca("switch") == "switched"
        assert pki.ca_cert_path.read_text() == new
        assert mqtt.ca_pem == new + old
        assert refused(await token_login(mqtt, old))  # a device that missed the bundle
        assert await token_login(mqtt, new) == "accepted"
        assert await token_login(mqtt, old + new) == "accepted"
        new_device = issue_client_cert(pki, "dev-new", 30)
        assert await cert_login(mqtt, new_device, tmp_path) == "accepted"
        assert await cert_login(mqtt, old_device, tmp_path) == "accepted"  # still trusted
        assert build_crl(pki, []).count("BEGIN X509 CRL") == 2  # one CRL per trusted CA

        # finish: only the new CA is trusted.
        assert await mqtt.rotate_ca("finish") == "none"
        assert mqtt.ca_pem == new
        assert set(mqtt.certificate_expiry()) == {"server", "ca"}
        assert await token_login(mqtt, new) == "accepted"
        assert refused(await token_login(mqtt, old))
        assert refused(await cert_login(mqtt, old_device, tmp_path))
        assert await cert_login(mqtt, new_device, tmp_path) == "accepted"
        assert not any(p.exists() for p in (*pki.next_ca_paths, *pki.previous_ca_paths))

    # A restart keeps the new CA and its server certificate.
    async with MosquittoSupervisor(layout, provider({"dev-a": hash_token(TOKEN)})) as again:
        assert again.ca_pem == new
        assert await token_login(again, new) == "accepted"
