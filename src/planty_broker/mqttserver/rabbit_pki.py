"""Device certificates on the RabbitMQ cluster: signed by the cluster's CA, refused by its CRL.

The cluster's CA is the one the nodes trust (`ssl_options.cacertfile`, `cluster.ca_file`)
and its key (`cluster.ca_key_file`): device certificates are issued exactly as on the
supervised Mosquitto (`pki.issue_client_cert`: CN = device id, EC P-256, clientAuth).

Revoked and retired certificates go on a CRL signed by that CA (`pki.build_crl`), written
into `cluster.crl_dir` under the name Erlang's `ssl_crl_hash_dir` looks up at every TLS
handshake: `<hash>.r0`, `<hash>` being OpenSSL's subject-name hash of the CA (the CRL's
issuer), which `name_hash` computes here (no `openssl` binary needed). The nodes read the
folder with `ssl_options.crl_check = peer` (`rabbit_nodes.advanced_config`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.x509.name import _ASN1Type

from planty_broker.mqttserver.atomic import write_atomic
from planty_broker.mqttserver.pki import Pki, build_crl

# The string types OpenSSL canonicalises (ASN1_MASK_CANON): re-encoded as UTF8String,
# trimmed, inner white space collapsed to one space, ASCII lowercased.
_CANON = {
    _ASN1Type.UTF8String,
    _ASN1Type.BMPString,
    _ASN1Type.UniversalString,
    _ASN1Type.PrintableString,
    _ASN1Type.T61String,
    _ASN1Type.IA5String,
    _ASN1Type.VisibleString,
}
_SPACE = re.compile(r"[ \t\n\v\f\r]+")


def cluster_pki(ca_file: Path, ca_key_file: Path) -> Pki:
    """The cluster's CA as a `Pki` (only its CA files are used: signing, the CRL)."""
    d = ca_file.parent
    return Pki(d, ca_file, ca_key_file, d / "unused-server.pem", d / "unused-server.key", ())


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([arcs[0] * 40 + arcs[1]])
    for arc in arcs[2:]:
        chunk, rest = [arc & 0x7F], arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def name_hash(name: x509.Name) -> str:
    """OpenSSL's `X509_NAME_hash` (`openssl x509 -hash`), as Erlang's
    `public_key:short_name_hash` computes it: SHA-1 of the canonical encoding (each RDN's
    SET, without the outer SEQUENCE), its first 4 bytes read little-endian, 8 hex digits."""
    sets = []
    for rdn in name.rdns:
        entries = []
        for attr in rdn:
            value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
            kind = getattr(attr, "_type", _ASN1Type.UTF8String)
            if kind in _CANON:
                text = _SPACE.sub(" ", value.strip(" \t\n\v\f\r"))
                text = "".join(c.lower() if c.isascii() else c for c in text)
                encoded = _der(0x0C, text.encode())
            else:
                encoded = _der(kind.value, value.encode("latin-1"))
            entries.append(_der(0x30, _oid(attr.oid.dotted_string) + encoded))
        sets.append(_der(0x31, b"".join(sorted(entries))))
    digest = hashlib.sha1(b"".join(sets)).digest()  # noqa: S324 - OpenSSL's name hash
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def crl_path(pki: Pki, crl_dir: Path) -> Path:
    """Where the nodes look for the CA's CRL: `<crl_dir>/<hash of the CA's subject>.r0`."""
    ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    return crl_dir / f"{name_hash(ca.subject)}.r0"


def write_crl(pki: Pki, crl_dir: Path, serials: Iterable[int]) -> Path:
    """Sign the CRL of `serials` and put it where the nodes read it (atomic, 0644: the
    RabbitMQ nodes may run as another user)."""
    path = crl_path(pki, crl_dir)
    write_atomic(path, build_crl(pki, serials), mode=0o644)
    return path
