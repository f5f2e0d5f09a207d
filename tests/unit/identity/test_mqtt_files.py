"""The supervised Mosquitto's identity parts: X.509 listener, claim slots without passwords, CRL."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from planty_broker.domain.identity import ClaimWindow
from planty_broker.mqttserver.files import render_acl, render_conf, render_passwords
from planty_broker.mqttserver.layout import MosquittoLayout, MqttAccount
from planty_broker.mqttserver.passwords import hash_token
from planty_broker.mqttserver.pki import build_crl, cert_info, ensure_pki, issue_client_cert
from planty_broker.ports.device_authority import AclGrant
from planty_broker.ports.memory_authority import MemoryDeviceAuthority
from planty_broker.services.bus import Bus
from planty_broker.services.credentials.events import EventRecorder
from planty_broker.services.credentials.provisioning import ProvisioningService, _id_from_serial


def layout(tmp_path: Path, **kw: object) -> MosquittoLayout:
    return MosquittoLayout(data_dir=tmp_path, port=8883, internal_port=18830, **kw)  # type: ignore[arg-type]


def test_the_x509_listener_requires_a_certificate_and_reads_the_crl(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", ["localhost"])
    conf = render_conf(layout(tmp_path, x509_port=8884), pki)
    block = conf.split("listener 8884", 1)[1].split("\n\n", 1)[0]
    for line in (
        f"cafile {tmp_path / 'mosquitto' / 'ca.pem'}",  # its own copy (the CA bundle)
        f"crlfile {tmp_path / 'mosquitto' / 'revoked.crl.pem'}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
    ):
        assert line in block
    assert "listener 8884" not in render_conf(layout(tmp_path), pki)  # off: no listener


def test_an_account_without_password_gets_acl_lines_but_cannot_log_in() -> None:
    slot = MqttAccount("planty-claim-0", "", (AclGrant("write", "planty/v1/provision/x/request"),))
    gateway = MqttAccount("planty-gateway", hash_token("g"))
    passwords = render_passwords({"dev-a": hash_token("a")}, [gateway, slot])
    assert "planty-claim-0" not in passwords and "planty-gateway:" in passwords
    # while the window is open its password comes with the device accounts
    opened = render_passwords({"planty-claim-0": hash_token("claim")}, [gateway, slot])
    assert opened.count("planty-claim-0:") == 1
    with pytest.raises(ValueError, match="reserved"):
        render_passwords({"planty-gateway": hash_token("x")}, [gateway, slot])
    acl = render_acl(MosquittoLayout(data_dir=Path("/x"), port=1, internal_port=2), [slot])
    assert "user planty-claim-0\ntopic write planty/v1/provision/x/request" in acl


def test_the_crl_lists_revoked_serials_and_does_not_expire_soon(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", ["localhost"])
    cert, _key = issue_client_cert(pki, "dev-a", 30)
    info = cert_info(cert)
    assert info.common_name == "dev-a" and len(info.fingerprint) == 64
    crl = x509.load_pem_x509_crl(build_crl(pki, [info.serial, 42]).encode())
    assert {r.serial_number for r in crl} == {info.serial, 42}
    ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert (
        crl.next_update_utc is not None
        and crl.next_update_utc.year >= ca.not_valid_after_utc.year - 1
    )


class _Creds:
    def __init__(self) -> None:
        self.extra_accounts: list[object] = []


def test_claim_slots_may_only_request_and_read_their_own_reply_and_log_in_while_open() -> None:
    now = [1_000_000]
    creds = _Creds()
    authority = MemoryDeviceAuthority(claim_secret="claim-secret")
    prov = ProvisioningService(
        creds,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        EventRecorder(Bus()),
        authority=authority,
        prefix="planty/v1",
        slots=3,
        clock=lambda: now[0],
    )
    accounts = prov.accounts()
    # Both halves: the second takes a rotated claim secret (docs/security.md).
    assert [a.username for a in accounts] == [f"planty-claim-{n}" for n in range(6)]
    assert all(a.verifier == "" for a in accounts)  # the ACL is there, always
    assert set(accounts[1].grants) == {
        AclGrant("deny", "planty/v1/devices/#"),
        AclGrant("write", "planty/v1/provision/planty-claim-1/request"),
        AclGrant("read", "planty/v1/provision/planty-claim-1/reply"),
    }
    assert creds.extra_accounts == [prov.accounts]
    assert all(a.verifier == "" for a in prov.accounts())  # closed: no password line
    prov._window = ClaimWindow(now[0], now[0] + 5000)
    entries = {a.username: a.verifier for a in prov.accounts() if a.verifier}
    assert sorted(entries) == ["planty-claim-0", "planty-claim-1", "planty-claim-2"]
    assert all(authority.verify_secret("claim-secret", v) for v in entries.values())
    now[0] += 5000
    assert all(a.verifier == "" for a in prov.accounts())  # the window ended by itself


def test_device_ids_from_serials() -> None:
    assert _id_from_serial("ESP32-A1:B2:C3") == "esp32-a1-b2-c3"
    odd = _id_from_serial("??")
    assert odd.startswith("dev-") and len(odd) == 16
    assert _id_from_serial("planty-gateway").startswith("dev-")  # never a reserved name
