"""Device tokens and their hashes in Mosquitto 2.0's password-file format.

`hash_token` writes exactly what `mosquitto_passwd` writes (checked against
2.0.11): `$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`, 12-byte
salt, 64-byte hash, 101 iterations. The registry stores this same string, so the
password file is regenerated from the store without ever knowing a token.

101 iterations (Mosquitto's default) is enough because tokens are random
(>= 128 bits): stretching protects guessable passwords, not random keys. It
matters for speed: Mosquitto re-checks every connected client's hash on each
SIGHUP reload and every device's hash on each connect.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64
TOKEN_BYTES = 24  # 192 bits, 32 URL-safe characters

_HASH_RE = re.compile(r"^\$7\$([0-9]{1,9})\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$")


def new_token() -> str:
    """A fresh device or service token: 192 random bits, URL-safe, no padding."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str, *, iterations: int = ITERATIONS) -> str:
    """Hash `token` for Mosquitto's password_file (and for storage): `$7$...`."""
    if not 1 <= iterations <= 999_999_999:
        raise ValueError("iterations must be 1..999999999")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", token.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_token(token: str, hashed: str) -> bool:
    """True if `token` matches `hashed` (a `$7$` hash); constant time in the token's content."""
    parsed = _parse(hashed)
    if parsed is None:
        return False
    iterations, salt, expected = parsed
    digest = hashlib.pbkdf2_hmac("sha512", token.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def is_password_hash(hashed: str) -> bool:
    """True if `hashed` is a well-formed `$7$` hash that Mosquitto can read."""
    return _parse(hashed) is not None


def _parse(hashed: str) -> tuple[int, bytes, bytes] | None:
    m = _HASH_RE.fullmatch(hashed)
    if m is None:
        return None
    try:
        salt = base64.b64decode(m.group(2), validate=True)
        expected = base64.b64decode(m.group(3), validate=True)
    except binascii.Error:
        return None
    iterations = int(m.group(1))
    if iterations < 1 or not salt or len(expected) != HASH_BYTES:
        return None
    return iterations, salt, expected


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
