"""The broker's own CA and the Mosquitto server certificate, created once in the data folder.

Devices trust `ca.pem` (returned with their credentials). The CA is created once
and never replaced automatically (replacing it would strand every device); the
server certificate is re-issued when the host names change, when it nears
expiry, or when it was not signed by the current CA. The CA also signs X.509
client certificates for devices (`issue_client_cert`).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from planty_broker.mqttserver.atomic import write_atomic
from planty_broker.mqttserver.errors import PkiError

CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = timedelta(days=30)
BACKDATE = timedelta(hours=1)  # tolerate device clocks that run a little behind
ALWAYS_SAN = ("localhost", "127.0.0.1", "::1")
_ORG = "Planty Broker"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Pki:
    """Where the CA and server certificate live; `hostnames` is the server cert's SAN."""

    directory: Path
    ca_cert_path: Path
    ca_key_path: Path
    cert_path: Path
    key_path: Path
    hostnames: tuple[str, ...]

    def ca_pem(self) -> str:
        """The CA certificates devices must trust, PEM text: the CA, and during a CA rotation
        also the other one (the new CA before the switch, the old one after it)."""
        return "".join(path.read_text() for path in self.trusted_ca_paths())

    def trusted_ca_paths(self) -> list[Path]:
        """ca.pem first, then ca-next.pem or ca-previous.pem while a rotation is under way."""
        extra = [p for p in (self.next_ca_paths[0], self.previous_ca_paths[0]) if p.exists()]
        return [self.ca_cert_path, *extra]

    @property
    def next_ca_paths(self) -> tuple[Path, Path]:
        """The new CA of a rotation before the switch (trusted, not yet signing)."""
        return self.directory / "ca-next.pem", self.directory / "ca-next.key"

    @property
    def previous_ca_paths(self) -> tuple[Path, Path]:
        """The old CA of a rotation after the switch (trusted, signing nothing new)."""
        return self.directory / "ca-previous.pem", self.directory / "ca-previous.key"

    def ca_rotation_phase(self) -> str:
        """`none`, `overlap` (devices get old + new CA; the old one still signs) or
        `switched` (the new CA signs; the old one still trusted until `finish`)."""
        if self.next_ca_paths[0].exists():
            return "overlap"
        if self.previous_ca_paths[0].exists():
            return "switched"
        return "none"


def ensure_pki(directory: Path, hostnames: Sequence[str], now: datetime | None = None) -> Pki:
    """Create the CA and server certificate once; re-issue only the server cert when needed
    (other host names, another CA, or less than `RENEW_BEFORE` left at `now`)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The gateway's alone: Mosquitto reads its own copies of the server certificate and key
    # (mqttserver/files.py), never this folder and never the CA key.
    directory.chmod(0o700)
    wanted = _san_entries([*hostnames, *ALWAYS_SAN])
    pki = Pki(
        directory=directory,
        ca_cert_path=directory / "ca.pem",
        ca_key_path=directory / "ca.key",
        cert_path=directory / "server.pem",
        key_path=directory / "server.key",
        hostnames=tuple(str(e) for e in wanted),
    )
    _ensure_ca(pki)
    _recover_ca_switch(pki)
    _own_keys(pki)
    renew_server_if_due(pki, now)
    return pki


# ---------------------------------------------------------------- CA rotation (docs/security.md)


def start_ca_rotation(pki: Pki) -> None:
    """Make the new CA (`ca-next`): trusted from now on beside the current one, signing
    nothing yet. Devices must get the new bundle (`Pki.ca_pem()`) before `switch_ca`."""
    phase = pki.ca_rotation_phase()
    if phase != "none":
        raise PkiError(
            f"a CA rotation is under way (phase {phase}): "
            + ("switch to the new CA first" if phase == "overlap" else "finish it first")
        )
    _new_ca(*pki.next_ca_paths)


def switch_ca(pki: Pki, now: datetime | None = None) -> None:
    """The new CA signs from now on (the server certificate, new device certificates); the
    old one stays trusted (`ca-previous`) until `finish_ca_rotation`."""
    if pki.ca_rotation_phase() != "overlap":
        raise PkiError("no new CA to switch to: start a CA rotation first")
    next_cert, next_key = pki.next_ca_paths
    prev_cert, prev_key = pki.previous_ca_paths
    # Copies first: a crash anywhere leaves a state `_recover_ca_switch` completes.
    write_atomic(prev_key, pki.ca_key_path.read_bytes(), mode=0o600)
    write_atomic(prev_cert, pki.ca_cert_path.read_bytes(), mode=0o644)
    write_atomic(pki.ca_key_path, next_key.read_bytes(), mode=0o600)
    write_atomic(pki.ca_cert_path, next_cert.read_bytes(), mode=0o644)
    next_cert.unlink()
    next_key.unlink()
    renew_server_if_due(pki, now)  # not signed by the current CA: re-issued by the new one


def finish_ca_rotation(pki: Pki) -> None:
    """Trust only the new CA: certificates signed by the old one are refused from now on."""
    if pki.ca_rotation_phase() != "switched":
        raise PkiError("no old CA to retire: switch to the new CA first")
    for path in pki.previous_ca_paths:
        path.unlink(missing_ok=True)


def _recover_ca_switch(pki: Pki) -> None:
    next_cert, next_key = pki.next_ca_paths
    prev_cert, prev_key = pki.previous_ca_paths
    if not (next_cert.exists() and prev_cert.exists()):
        return
    if pki.ca_cert_path.read_bytes() == next_cert.read_bytes():  # the switch was done
        next_cert.unlink()
        next_key.unlink(missing_ok=True)
    else:  # it had not begun replacing ca.pem: back to the overlap
        prev_cert.unlink()
        prev_key.unlink(missing_ok=True)


def renew_server_if_due(pki: Pki, now: datetime | None = None) -> bool:
    """Re-issue the server certificate if it is due at `now` (see `ensure_pki`); True if
    re-issued. The running gateway calls this periodically (the supervisor's renewal loop),
    so a certificate never expires while it runs."""
    now = now or datetime.now(UTC)
    wanted = _san_entries(list(pki.hostnames))
    ca_cert, ca_key = _load_ca(pki)
    if not _server_needs_issue(pki, ca_cert, wanted, now):
        return False
    _issue_server(pki, ca_cert, ca_key, wanted, now)
    return True


def cert_expiry(path: Path) -> datetime | None:
    """The end of validity of the (first) certificate in `path`; None if unreadable."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc


def issue_client_cert(
    pki: Pki, common_name: str, days: int, *, valid_from: datetime | None = None
) -> tuple[str, str]:
    """A client certificate (CN = `common_name`, clientAuth) signed by our CA: (cert, key) PEM."""
    if days < 1:
        raise ValueError("days must be >= 1")
    if not common_name or len(common_name) > 64:
        raise ValueError("common_name must be 1..64 characters")
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    start = valid_from or datetime.now(UTC) - BACKDATE
    cert = (
        _base_builder(_name(common_name), ca_cert.subject, key.public_key(), start, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_aki(ca_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key).decode()


def build_crl(pki: Pki, serials: Iterable[int]) -> str:
    """A CRL (PEM) signed by our CA listing `serials` (revoked device certificates).

    Valid for as long as the CA: OpenSSL refuses every certificate once a CRL's
    next-update time has passed, so the list must never expire on its own.
    """
    serials = sorted(set(serials))
    crls = [_crl(*_load_ca(pki), serials)]
    prev_cert, prev_key = pki.previous_ca_paths
    if prev_cert.exists() and prev_key.exists():  # its device certificates are still served
        crls.append(_crl(*_load_ca_files(prev_cert, prev_key), serials))
    return "".join(crls)


def _crl(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, serials: Iterable[int]
) -> str:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + timedelta(days=CA_DAYS))
    )
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - BACKDATE)
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the broker keeps of an issued certificate (never the key)."""

    serial: int
    fingerprint: str  # SHA-256 of the DER encoding, hex
    common_name: str
    not_after_ms: int


def cert_info(cert_pem: str) -> CertInfo:
    """Serial, fingerprint, CN and expiry of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertInfo(
        serial=cert.serial_number,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        common_name=str(cns[0].value) if cns else "",
        not_after_ms=int(cert.not_valid_after_utc.timestamp() * 1000),
    )


# ---------------------------------------------------------------- CA


def _ensure_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    have_cert, have_key = pki.ca_cert_path.exists(), pki.ca_key_path.exists()
    if have_cert and have_key:
        return _load_ca(pki)
    if have_cert or have_key:
        present, missing = (
            (pki.ca_cert_path, pki.ca_key_path)
            if have_cert
            else (pki.ca_key_path, pki.ca_cert_path)
        )
        raise PkiError(
            f"pki: {present} exists but {missing} is missing; restore it from a backup, "
            f"or delete {present} to create a new CA (every device must then get the new ca.pem)"
        )
    return _new_ca(pki.ca_cert_path, pki.ca_key_path)


def _new_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{_ORG} CA {secrets.token_hex(4)}")
    cert = (
        _base_builder(name, name, key.public_key(), datetime.now(UTC) - BACKDATE, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
    # Key first: a crash in between leaves "key without cert", which we report, never overwrite.
    write_atomic(key_path, _key_pem(key), mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert, key


def _load_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return _load_ca_files(pki.ca_cert_path, pki.ca_key_path)


def _load_ca_files(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"pki: cannot read the CA in {cert_path.parent}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"pki: {key_path} does not belong to {cert_path}")
    return cert, key


# ---------------------------------------------------------------- server certificate


def _server_needs_issue(
    pki: Pki, ca_cert: x509.Certificate, wanted: Sequence[str | IpAddress], now: datetime
) -> bool:
    if not (pki.cert_path.exists() and pki.key_path.exists()):
        return True
    try:
        cert = x509.load_pem_x509_certificate(pki.cert_path.read_bytes())
        key = serialization.load_pem_private_key(pki.key_path.read_bytes(), password=None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return True
    have = {*san.get_values_for_type(x509.DNSName), *san.get_values_for_type(x509.IPAddress)}
    return (
        have != set(wanted)
        or not isinstance(key, ec.EllipticCurvePrivateKey)
        or key.public_key() != cert.public_key()
        or cert.not_valid_after_utc - now < RENEW_BEFORE
    )


def _issue_server(
    pki: Pki,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    wanted: Sequence[str | IpAddress],
    now: datetime,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    general: list[x509.GeneralName] = [
        x509.DNSName(e) if isinstance(e, str) else x509.IPAddress(e) for e in wanted
    ]
    cert = (
        _base_builder(
            _name(str(wanted[0])[:64]),
            ca_cert.subject,
            key.public_key(),
            now - BACKDATE,
            SERVER_DAYS,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(_aki(ca_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_atomic(pki.key_path, _key_pem(key), mode=0o600)
    write_atomic(pki.cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


# ---------------------------------------------------------------- helpers


def _own_keys(pki: Pki) -> None:
    """Private keys 0600 and ours (an older version handed server.key to `mosquitto`)."""
    for path in (pki.ca_key_path, pki.key_path, pki.next_ca_paths[1], pki.previous_ca_paths[1]):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_mode & 0o077:
            path.chmod(0o600)
        if st.st_uid != os.geteuid() and os.geteuid() == 0:
            os.chown(path, 0, 0)


def _san_entries(hostnames: Sequence[str]) -> list[str | IpAddress]:
    """Host names as SAN entries, first one first, duplicates dropped, IPs parsed."""
    out: list[str | IpAddress] = []
    for raw in hostnames:
        name = raw.strip().lower()
        if not name:
            continue
        entry: str | IpAddress
        try:
            entry = ipaddress.ip_address(name)
        except ValueError:
            if any(c.isspace() for c in name) or "/" in name:
                raise PkiError(f"pki: {raw!r} is not a valid host name") from None
            entry = name
        if entry not in out:
            out.append(entry)
    return out


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _base_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    start: datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _aki(ca_key: ec.EllipticCurvePrivateKey) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
