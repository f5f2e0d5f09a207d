"""Bearer-token authentication for the HTTP API.

Tokens are compared by their SHA-256 digest with `hmac.compare_digest`
(constant time); the plaintext admin token is never kept in memory beyond
start-up, never logged. Scopes: `admin` (everything), `server` (devices,
commands, events, rules), `read` (GET only).

Failures are limited per client address (`failures`, a bounded `FailureLimiter`):
an address past `api.auth_max_failures` wrong tokens in `api.auth_failure_window_s`
gets 429 with Retry-After instead of 401. A valid token always passes, so a
misbehaving neighbour behind the same address never locks anybody out. Checking a
token costs one SHA-256 and a dict lookup: nothing reaches the store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from planty_broker.services.access.limits import DEFAULT_MAX_KEYS, FailureLimiter


class Scope(StrEnum):
    ADMIN = "admin"
    SERVER = "server"
    READ = "read"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id (or "admin"), its scope and its name (for the audit)."""

    token_id: str
    scope: Scope
    name: str = ""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_api_token(prefix: str = "pb") -> str:
    """An API token: a readable prefix and 256 random bits."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


# Extra token sources (issue 4's token service) plug in here: digest -> Principal | None.
TokenLookup = Callable[[str], Awaitable[Principal | None]]


class Authenticator:
    """Checks a bearer token against the admin token and any registered lookups."""

    def __init__(
        self,
        admin_token: str,
        *,
        max_failures: int = 20,
        failure_window_s: float = 60.0,
        max_clients: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._admin_digest = digest(admin_token)
        self.lookups: list[TokenLookup] = []
        self.failures = FailureLimiter(max_failures, failure_window_s, max_keys=max_clients)
        self.refused = 0  # wrong tokens answered 401
        self.rate_limited = 0  # wrong tokens answered 429

    async def authenticate(self, token: str) -> Principal | None:
        d = digest(token)
        if hmac.compare_digest(d, self._admin_digest):
            return Principal("admin", Scope.ADMIN, "admin")
        for lookup in self.lookups:
            principal = await lookup(d)
            if principal is not None:
                return principal
        return None


def ensure_admin_token(data_dir: Path, configured: str) -> tuple[str, Path | None]:
    """The admin token: PLANTY_ADMIN_TOKEN, else generated once into data_dir/admin-token (0600).

    Returns the token and the file it lives in (None when it came from the environment).
    """
    if configured:
        return configured, None
    path = data_dir / "admin-token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            if path.stat().st_mode & 0o077:  # written by an older version or by hand
                path.chmod(0o600)
            return token, path
    token = new_api_token("pb_admin")
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token, path
