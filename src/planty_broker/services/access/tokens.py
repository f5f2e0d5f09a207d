"""API tokens with scopes: create (the secret shown once), list, revoke, authenticate.

Only the SHA-256 digest of a token is stored. A token is 256 random bits, so a
fast hash is right: stretching (bcrypt, PBKDF2) protects guessable passwords and
adds nothing against a 2^256 search, while it would cost every API request a
hash of tens of milliseconds. A lookup goes by digest (a dict here, a unique
index in the database) and the stored digest is then compared with
`hmac.compare_digest`; timing of the dict lookup can reveal at most bits of a
SHA-256 digest, which say nothing about a token.

Authentication never reaches the store: the digests of every active token are
held in memory (read at start, so also across a restart) and kept in step with it
by `create` and `revoke` here, and by re-reading the whole list every
`recheck_s` (one query whatever the traffic) for tokens created or revoked on
another instance (PostgreSQL). An unknown token is answered from memory, so a
flood of wrong tokens costs the store (and the ingest that shares its thread)
nothing. A re-read that overlaps a create or revoke here is discarded (the next
one counts), so it can never bring back a token just revoked.

The last-used time is kept in memory on every request and written to the
store in one batch every `flush_every_s` (and at stop), never per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from planty_broker.domain.identity import ApiToken, TokenScope
from planty_broker.errors import AccessError, StoreError
from planty_broker.ports.store import IdentityStore
from planty_broker.tasks import spawn

log = logging.getLogger(__name__)

MAX_NAME = 200


class TokenError(AccessError):
    """Root of token errors; the message is one line for the user."""


class UnknownTokenError(TokenError, KeyError):
    def __str__(self) -> str:
        return f"no API token with id {self.args[0]!r}"


class InvalidTokenRequestError(TokenError, ValueError):
    pass


def new_secret(scope: TokenScope) -> str:
    """`pb_<scope>_` and 256 random bits: the prefix lets secret scanners and people spot it."""
    return f"pb_{scope.value}_{secrets.token_urlsafe(32)}"


def digest_of(secret: str) -> str:
    """The stored form of a token: SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TokenService:
    """The API tokens of this gateway (besides the bootstrap admin token)."""

    def __init__(
        self,
        store: IdentityStore,
        *,
        flush_every_s: float = 30.0,
        recheck_s: float = 10.0,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._store = store
        self._flush_every_s = flush_every_s
        self._recheck_s = recheck_s
        self._clock = clock
        self._by_digest: dict[str, ApiToken] = {}  # every active token
        self._changes = 0  # bumped before and after each create/revoke here
        self._last_used: dict[str, int] = {}  # token id -> unix ms, not yet written
        self._tasks: list[asyncio.Task[None]] = []
        self.refreshes = 0  # re-reads of the whole list that were applied

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [
            spawn("api-token-last-used", self._flush_loop),
            spawn("api-token-refresh", self._refresh_loop),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush()

    async def refresh(self) -> bool:
        """Re-read every active token from the store; False if a create or revoke here
        overlapped the read (then the next re-read counts)."""
        before = self._changes
        rows = await self._store.list_tokens()
        if self._changes != before:
            return False
        self._by_digest = {t.digest: t for t in rows if t.active}
        self.refreshes += 1
        return True

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._recheck_s)
            try:
                await self.refresh()
            except StoreError as exc:  # keep what we knew
                log.warning("cannot re-read the API tokens: %s", exc)

    # ------------------------------------------------------------ management

    async def create(
        self, name: str, scope: TokenScope | str, origin: str = "api"
    ) -> tuple[ApiToken, str]:
        """A new token; returns its record and the secret (shown once, never stored)."""
        name = name.strip()
        if not name or len(name) > MAX_NAME:
            raise InvalidTokenRequestError(f"token name must be 1..{MAX_NAME} characters")
        try:
            scope = TokenScope(scope)
        except ValueError:
            raise InvalidTokenRequestError(
                f"scope {scope!r} is unknown; use one of: {', '.join(s.value for s in TokenScope)}"
            ) from None
        secret = new_secret(scope)
        token = ApiToken(
            id=f"tok-{secrets.token_hex(6)}",
            name=name,
            scope=scope,
            digest=digest_of(secret),
            origin=origin,
            created_ms=self._clock(),
        )
        self._changes += 1
        try:
            await self._store.add_token(token)
        finally:
            self._changes += 1
        self._by_digest[token.digest] = token
        log.info("API token %s (%s, scope %s) created", token.id, name, scope.value)
        return token, secret

    async def list(self, include_revoked: bool = False) -> list[ApiToken]:
        """Tokens with their last-used time (the newest, even if not yet written)."""
        out = []
        for t in await self._store.list_tokens():
            if not include_revoked and not t.active:
                continue
            pending = self._last_used.get(t.id)
            if pending is not None and (t.last_used_ms is None or pending > t.last_used_ms):
                out.append(replace(t, last_used_ms=pending))
            else:
                out.append(t)
        return out

    async def revoke(self, token_id: str) -> ApiToken:
        """Revoke at once: the next request with it gets 401."""
        self._changes += 1
        try:
            token = await self._store.revoke_token(token_id, self._clock())
        finally:
            self._changes += 1
        if token is None:
            raise UnknownTokenError(token_id)
        self._by_digest.pop(token.digest, None)
        log.info("API token %s (%s) revoked", token.id, token.name)
        return token

    # ------------------------------------------------------------ authentication

    async def lookup(self, digest: str) -> ApiToken | None:
        """The active token with this SHA-256 digest, or None (from memory, never the store);
        records its use."""
        token = self._by_digest.get(digest)
        if token is None or not hmac.compare_digest(token.digest, digest):
            return None
        self._last_used[token.id] = self._clock()
        return token

    @property
    def known(self) -> int:
        """Active tokens held in memory."""
        return len(self._by_digest)

    async def flush(self) -> None:
        """Write the pending last-used times in one transaction."""
        pending, self._last_used = self._last_used, {}
        if not pending:
            return
        try:
            await self._store.touch_tokens(pending)
        except StoreError as exc:
            log.warning("cannot record API token use: %s; retrying later", exc)
            for token_id, at in pending.items():
                self._last_used[token_id] = max(at, self._last_used.get(token_id, 0))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_every_s)
            await self.flush()
