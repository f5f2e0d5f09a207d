"""RabbitMQ's own password hash, computed in the gateway (so no secret is ever sent).

`rabbit_password_hashing_sha256`: base64(salt || SHA-256(salt || password)) with a 4-byte
random salt. The verifier we store is that string behind `rmq256$`, so a verifier of
another adapter (Mosquitto's `$7$`) is never mistaken for one of ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "rmq256$"
ALGORITHM = "rabbit_password_hashing_sha256"


def rabbit_hash(password: str, salt: bytes | None = None) -> str:
    """The value RabbitMQ keeps as `password_hash` (base64)."""
    salt = secrets.token_bytes(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def hash_secret(secret: str) -> str:
    return PREFIX + rabbit_hash(secret)


def to_rabbit(verifier: str) -> str | None:
    """The management API's `password_hash` for one of our verifiers (None: not ours)."""
    if not verifier.startswith(PREFIX):
        return None
    raw = verifier[len(PREFIX) :]
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(decoded) == 36 else None


def verify_secret(secret: str, verifier: str) -> bool:
    raw = to_rabbit(verifier)
    if raw is None:
        return False
    decoded = base64.b64decode(raw)
    mine = hashlib.sha256(decoded[:4] + secret.encode()).digest()
    return hmac.compare_digest(mine, decoded[4:])
