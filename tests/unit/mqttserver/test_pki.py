"""The broker's CA and certificates: created once, re-issued only when needed."""

from __future__ import annotations

import ipaddress
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from planty_broker.mqttserver.errors import PkiError
from planty_broker.mqttserver.pki import (
    cert_expiry,
    ensure_pki,
    issue_client_cert,
    renew_server_if_due,
)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*ext.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


def test_creates_ca_and_server_cert_with_private_keys(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", ["gw.example", "192.0.2.7"])
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in pki.directory.iterdir()}
    assert modes == {"ca.pem": 0o644, "ca.key": 0o600, "server.pem": 0o644, "server.key": 0o600}
    ca, server = load(pki.ca_cert_path), load(pki.cert_path)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= timedelta(days=3649)
    server.verify_directly_issued_by(ca)
    assert sans(server) == {"gw.example", "192.0.2.7", "localhost", "127.0.0.1", "::1"}
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert pki.ca_pem() == pki.ca_cert_path.read_text()
    assert "gw.example" in pki.hostnames
    assert ipaddress.ip_address("::1").compressed in pki.hostnames


def test_second_call_reuses_everything(tmp_path: Path) -> None:
    first = ensure_pki(tmp_path, ["gw.example"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = ensure_pki(tmp_path, ["GW.example "])  # same name, other spelling
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert first == second


def test_new_host_names_reissue_only_the_server_cert(tmp_path: Path) -> None:
    ensure_pki(tmp_path, ["old.example"])
    ca_before = (tmp_path / "ca.pem").read_bytes(), (tmp_path / "ca.key").read_bytes()
    ensure_pki(tmp_path, ["new.example"])
    assert ((tmp_path / "ca.pem").read_bytes(), (tmp_path / "ca.key").read_bytes()) == ca_before
    server = load(tmp_path / "server.pem")
    assert "new.example" in sans(server)
    assert "old.example" not in sans(server)
    server.verify_directly_issued_by(load(tmp_path / "ca.pem"))


def test_server_cert_from_another_ca_is_replaced(tmp_path: Path) -> None:
    ensure_pki(tmp_path / "a", ["h"])
    ensure_pki(tmp_path / "b", ["h"])
    for name in ("server.pem", "server.key"):
        shutil.copy(tmp_path / "b" / name, tmp_path / "a" / name)
    ensure_pki(tmp_path / "a", ["h"])
    load(tmp_path / "a" / "server.pem").verify_directly_issued_by(load(tmp_path / "a" / "ca.pem"))


def test_a_lost_ca_key_is_reported_not_replaced(tmp_path: Path) -> None:
    ensure_pki(tmp_path, ["h"])
    ca = (tmp_path / "ca.pem").read_bytes()
    (tmp_path / "ca.key").unlink()
    with pytest.raises(PkiError, match=r"ca\.key is missing; restore it") as info:
        ensure_pki(tmp_path, ["h"])
    assert "\n" not in str(info.value)
    assert (tmp_path / "ca.pem").read_bytes() == ca


def test_client_certificates_are_signed_by_the_ca(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path, ["h"])
    cert_pem, key_pem = issue_client_cert(pki, "greenhouse-1", days=30)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    cert.verify_directly_issued_by(load(pki.ca_cert_path))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "greenhouse-1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "PRIVATE KEY" in key_pem
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(days=30)


def test_client_certificate_can_be_issued_already_expired(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path, ["h"])
    start = datetime.now(UTC) - timedelta(days=10)
    cert_pem, _ = issue_client_cert(pki, "old-device", days=1, valid_from=start)
    assert x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc < datetime.now(UTC)
    with pytest.raises(ValueError, match="days"):
        issue_client_cert(pki, "x", days=0)


def test_the_server_certificate_is_renewed_30_days_ahead_on_the_injected_clock(
    tmp_path: Path,
) -> None:
    start = datetime.now(UTC).replace(microsecond=0)  # a base only: all below is relative
    pki = ensure_pki(tmp_path / "pki", ["gw.example"], now=start)
    first = load(pki.cert_path)
    assert first.not_valid_after_utc - start == timedelta(days=825) - timedelta(hours=1)
    assert mode_of(pki.directory) == 0o700
    assert not renew_server_if_due(pki, start + timedelta(days=790))  # 34 days left
    assert load(pki.cert_path).serial_number == first.serial_number
    later = start + timedelta(days=800)  # 24 days left: renewed
    assert renew_server_if_due(pki, later)
    second = load(pki.cert_path)
    assert second.serial_number != first.serial_number
    assert second.not_valid_before_utc == later - timedelta(hours=1)
    assert sans(second) == sans(first)
    second.verify_directly_issued_by(load(pki.ca_cert_path))
    assert cert_expiry(pki.cert_path) == second.not_valid_after_utc
    assert not renew_server_if_due(pki, later)  # once


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
