"""Device certificates on the RabbitMQ cluster, without a node: the CRL's file name (OpenSSL's
name hash, what Erlang's ssl_crl_hash_dir looks up), the node's TLS options, and which
users and connection closes an apply sends (a fake management API)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from planty_broker.mqttserver.pki import ensure_pki
from planty_broker.mqttserver.rabbit_authority import RabbitAuthority
from planty_broker.mqttserver.rabbit_nodes import advanced_config
from planty_broker.mqttserver.rabbit_passwords import hash_secret
from planty_broker.mqttserver.rabbit_pki import crl_path, name_hash, write_crl
from planty_broker.ports.device_authority import DesiredAccess, DeviceEndpoint


def test_the_name_hash_is_openssls(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", ["localhost"])
    ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    # canonical form: case, outer and inner white space do not change it
    odd = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "  Planty   Broker "),
            x509.NameAttribute(NameOID.COMMON_NAME, ca.subject.rfc4514_string().split("=")[1]),
        ]
    )
    plain = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "planty broker"),
            x509.NameAttribute(NameOID.COMMON_NAME, ca.subject.rfc4514_string().split("=")[1]),
        ]
    )
    assert name_hash(odd) == name_hash(plain)
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to compare with")
    out = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pki.ca_cert_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert name_hash(ca.subject) == out.stdout.strip()
    assert crl_path(pki, tmp_path).name == f"{out.stdout.strip()}.r0"


def test_the_crl_lists_the_revoked_serials(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", ["localhost"])
    path = write_crl(pki, tmp_path, [7, 11])
    crl = x509.load_pem_x509_crl(path.read_bytes())
    assert sorted(r.serial_number for r in crl) == [7, 11]
    assert path.stat().st_mode & 0o777 == 0o644  # the nodes may run as another user


def test_the_nodes_check_the_crl_only_when_a_folder_is_given() -> None:
    plain = advanced_config()
    assert "ssl_options" not in plain and "quorum_commands_soft_limit, 4096" in plain
    with_crl = advanced_config("/c/crl", "/c/ca.pem", "/c/server.pem", "/c/server.key")
    for part in (
        '{cacertfile, "/c/ca.pem"}',
        "{verify, verify_peer}",
        "{fail_if_no_peer_cert, false}",
        "{crl_check, peer}",
        '{crl_cache, {ssl_crl_hash_dir, {internal, [{dir, "/c/crl"}]}}}',
        "quorum_commands_soft_limit, 4096",
    ):
        assert part in with_crl


class FakeApi:
    """Records the management calls; `/api/users` answers `users`, a user's connections
    answer `connections`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.users: list[dict[str, Any]] = []
        self.connections: dict[str, list[dict[str, Any]]] = {}

    async def call(self, method: str, path: str, body: Any = None, *, ok: Any = ()) -> Any:
        self.calls.append((method, path, body))
        if path == "/api/users":
            return self.users
        if method == "GET" and path.startswith("/api/connections/username/"):
            return self.connections.get(path.rsplit("/", 1)[1], [])
        return None

    def take(self) -> list[tuple[str, str]]:
        out = [(m, p) for m, p, _ in self.calls if p != "/api/users"]
        self.calls.clear()
        return out

    def imported(self) -> dict[str, str]:
        """name -> password hash of the last definitions import."""
        body = next(b for m, p, b in reversed(self.calls) if p == "/api/definitions")
        return {u["name"]: u["password_hash"] for u in body["users"]}


async def test_a_certificate_device_is_a_user_without_password(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", ["localhost"])
    wanted = DesiredAccess()
    auth = RabbitAuthority(
        ["http://x"], "admin", "pw", DeviceEndpoint("h", 1, True, None, 1), pki=pki,
        crl_dir=tmp_path,
    )  # fmt: skip
    api = FakeApi()
    auth._api = api  # type: ignore[assignment]
    auth.set_source(lambda: wanted)
    token = hash_secret("t0k3n")

    wanted = DesiredAccess(certificate_devices=frozenset({"crt"}))
    await auth.apply()
    assert api.imported() == {"crt": ""}  # no password: only its certificate logs in
    assert crl_path(pki, tmp_path).exists()  # written at the first apply, empty
    api.take()

    # a token beside it: no session is cut (the certificate one must stay)
    wanted = DesiredAccess({"crt": token}, certificate_devices=frozenset({"crt"}))
    await auth.apply()
    assert api.imported()["crt"] != ""
    assert [m for m, _ in api.take()] == ["POST"]

    # the token withdrawn, the certificate stays: only the password sessions end
    api.connections["crt"] = [
        {"name": "by-password", "peer_cert_subject": ""},
        {"name": "by-cert", "peer_cert_subject": "CN=crt,O=Planty Broker"},
    ]
    wanted = DesiredAccess(certificate_devices=frozenset({"crt"}))
    await auth.apply()
    assert api.imported() == {"crt": ""}
    assert ("DELETE", "/api/connections/by-password") in api.take()
    assert not any(p == "/api/connections/by-cert" for _, p, _ in api.calls)

    # revoked: the user goes, every session with it, and the CRL lists the serial
    wanted = DesiredAccess(revoked_serials=frozenset({42}))
    await auth.apply()
    done = api.take()
    assert ("POST", "/api/users/bulk-delete") in done
    assert ("DELETE", "/api/connections/username/crt") in done
    crl = x509.load_pem_x509_crl(crl_path(pki, tmp_path).read_bytes())
    assert [r.serial_number for r in crl] == [42]


async def test_without_the_ca_key_certificates_are_not_offered() -> None:
    from planty_broker.ports.device_authority import AuthorityUnavailableError

    auth = RabbitAuthority(["http://x"], "admin", "pw", DeviceEndpoint("h", 1, True, None))
    api = FakeApi()
    auth._api = api  # type: ignore[assignment]
    auth.set_source(lambda: DesiredAccess(certificate_devices=frozenset({"crt"})))
    await auth.apply()
    assert not any(p == "/api/definitions" for _, p, _ in api.calls)
    with pytest.raises(AuthorityUnavailableError, match="ca_key_file"):
        await auth.issue_certificate("crt", 1)
