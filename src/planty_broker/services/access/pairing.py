"""Pairing the broker with a user's account: a short code, claimed once, gives the server its token.

One service for every front door (the HTTP API today, the Firestore connector
later). While the broker is not paired it holds a pairing code: 8 characters
from an alphabet without look-alikes (no 0/O, 1/I/L), valid `code_ttl_s`
(10 minutes), single use. `claim(code, account_id)` pairs the broker, creates
a `server`-scope API token for the account and returns its secret once;
`unpair()` removes the pairing and revokes that token.

Every gateway instance of a deployment answers alike (docs/scale-out.md): the codes
and the counters live in the store (`AccessStateStore`), the codes only as salted
scrypt hashes (`hash_code`). An instance shows the code it made itself, while it lives
(the store cannot give a code back); another instance shows one of its own. Any live
code is accepted by every instance, at most `MAX_CODES` are kept (live and recently
expired), and a claim that uses one forgets them all (single use).

Wrong codes are counted (in the store's shared counters, added at most every
`_SAVE_EVERY_S` and at stop: a flood of wrong codes costs the store nothing) and
limited per client address and per account, never fleet-wide (docs/security.md
has the arithmetic: 31^8 codes living 10 minutes cannot be guessed at any rate
the API serves, so a fleet-wide limit would only let an attacker lock the owner
out). A client with `max_failures` refused claims in `failure_window_s` gets
`RateLimitedError` until the window frees, even with the right code. An account
with `max_account_failures` refusals in the window is refused to every client
that itself failed in the window; a client that has not failed always gets its
try, so guessing for someone's account never locks that person out. Both maps
are bounded (`max_clients` keys each, the oldest forgotten) and kept in each
instance's memory: with N instances a client may try N times as often (still far
below what guessing a code needs). A code is never logged; an expired code is told
apart from a wrong one so a person knows to fetch a fresh one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from planty_broker.domain.identity import ApiToken, Pairing, StoredPairingCode, TokenScope
from planty_broker.errors import AccessError
from planty_broker.ports.store import AccessStateStore, IdentityStore
from planty_broker.services.access.audit import Actor, AuditLog
from planty_broker.services.access.limits import DEFAULT_MAX_KEYS, FailureLimiter, client_key
from planty_broker.services.access.tokens import TokenService, UnknownTokenError

log = logging.getLogger(__name__)

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # 31 symbols: 31^8 = 8.5e11 codes
CODE_LENGTH = 8
MAX_ACCOUNT_ID = 200
MAX_CODES = 8  # live and recently expired codes kept in the store (every instance's)
FAILED = "pairing.failed_claims"
RATE_LIMITED = "pairing.rate_limited"
_SAVE_EVERY_S = 10.0  # the refusal counters are added to the store at most this often
_NOTICE_FACTOR = 4  # this many times max_failures refused in a window, from all: a warning
# scrypt: about 10 ms a code here, so the 8.5e11 codes cannot be tried from a copy of the
# store before a code expires (10 minutes), and a claim checks at most MAX_CODES of them.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**12, 8, 1


class PairingError(AccessError):
    """Root of pairing errors; the message is one line for the user."""


class AlreadyPairedError(PairingError):
    pass


class NotPairedError(PairingError):
    pass


class InvalidCodeError(PairingError):
    pass


class ExpiredCodeError(PairingError):
    pass


class RateLimitedError(PairingError):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class PairingCode:
    code: str  # 8 characters, shown as XXXX-XXXX
    expires_ms: int

    @property
    def display(self) -> str:
        return f"{self.code[:4]}-{self.code[4:]}"


@dataclass(frozen=True, slots=True)
class PairingStatus:
    pairing: Pairing | None
    code: PairingCode | None  # only while not paired
    failed_claims: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class ClaimResult:
    pairing: Pairing
    token: ApiToken
    secret: str  # the server's API token: returned once, never stored


def normalize_code(raw: str) -> str:
    """What a person typed -> the canonical code (case, spaces and dashes do not matter)."""
    return "".join(ch for ch in raw.upper() if ch not in " -\t")


def new_code(length: int = CODE_LENGTH) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def hash_code(code: str, salt: bytes | None = None) -> str:
    """`scrypt$<salt hex>$<hash hex>` of a canonical code."""
    salt = secrets.token_bytes(16) if salt is None else salt
    raw = hashlib.scrypt(code.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return f"scrypt${salt.hex()}${raw.hex()}"


def code_matches(code: str, digest: str) -> bool:
    kind, _, rest = digest.partition("$")
    salt_hex, _, _ = rest.partition("$")
    if kind != "scrypt":
        return False
    try:
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    return hmac.compare_digest(hash_code(code, salt).encode(), digest.encode())


class PairingService:
    """Shows pairing codes, pairs and unpairs; see the module docstring."""

    def __init__(
        self,
        store: IdentityStore,
        shared: AccessStateStore,
        tokens: TokenService,
        *,
        code_ttl_s: float = 600.0,
        max_failures: int = 5,
        failure_window_s: float = 60.0,
        max_account_failures: int = 20,
        max_clients: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], int] = _now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._shared = shared
        self._tokens = tokens
        self._ttl_ms = int(code_ttl_s * 1000)
        self._window_s = failure_window_s
        self._clock = clock
        self._monotonic = monotonic
        self._pairing: Pairing | None = None  # as last read
        self._mine: tuple[str, PairingCode] | None = None  # (stored id, code) made here
        self._lock = asyncio.Lock()
        self.clients = FailureLimiter(
            max_failures, failure_window_s, max_keys=max_clients, monotonic=monotonic
        )
        self.accounts = FailureLimiter(
            max_account_failures, failure_window_s, max_keys=max_clients, monotonic=monotonic
        )
        self._notice_at = max_failures * _NOTICE_FACTOR
        self._window_started = monotonic()
        self._window_failures = 0
        self._saved_at: float | None = None
        self._failed_pending = 0  # refused claims not yet added to the shared counter
        self._limited_pending = 0  # rate-limited claims not yet added
        self.failed_claims = 0  # this instance's, since it started (/metrics)
        self.rate_limited = 0
        self.audit: AuditLog | None = None  # a successful claim is an `audit` event

    async def start(self) -> None:
        self._pairing = await self._store.get_pairing()

    async def stop(self) -> None:
        await self._flush_counts()

    # ------------------------------------------------------------ reading

    @property
    def paired(self) -> bool:
        """As last read from the store (`status()` and `claim()` read it)."""
        return self._pairing is not None

    @property
    def pairing(self) -> Pairing | None:
        """The pairing as last read from the store."""
        return self._pairing

    async def current_code(self) -> PairingCode | None:
        """A live code (a fresh one once this instance's last expired); None while paired."""
        self._pairing = await self._store.get_pairing()
        if self._pairing is not None:
            return None
        async with self._lock:
            now = self._clock()
            mine = self._mine
            if mine is not None and now < mine[1].expires_ms:
                stored = {c.id for c in await self._shared.pairing_codes()}
                if mine[0] in stored:  # not used up (a claim clears them all) nor pushed out
                    return mine[1]
            code = PairingCode(new_code(), now + self._ttl_ms)
            row = StoredPairingCode(
                secrets.token_hex(8),
                await asyncio.to_thread(hash_code, code.code),
                now,
                code.expires_ms,
            )
            await self._shared.add_pairing_code(row, keep=MAX_CODES)
            self._mine = (row.id, code)
            return code

    async def status(self) -> PairingStatus:
        code = await self.current_code()
        await self._flush_counts()
        counts = await self._shared.counts()
        return PairingStatus(
            self._pairing, code, counts.get(FAILED, 0), counts.get(RATE_LIMITED, 0)
        )

    # ------------------------------------------------------------ pairing

    async def claim(self, code: str, account_id: str, client: str = "?") -> ClaimResult:
        """Pair with `account_id` if `code` is a live code; raises a `PairingError` if not."""
        account_id = account_id.strip()
        if not account_id or len(account_id) > MAX_ACCOUNT_ID:
            raise PairingError(f"account_id must be 1..{MAX_ACCOUNT_ID} characters")
        key = client_key(client)
        self._check_rate(key, account_id)
        self._pairing = await self._store.get_pairing()
        if self._pairing is not None:
            raise AlreadyPairedError(
                "this broker is already paired; unpair it first (`planty unpair`)"
            )
        given = normalize_code(code)
        now = self._clock()
        stored = await self._shared.pairing_codes()
        live = [c.digest for c in stored if now < c.expires_ms]
        if not await asyncio.to_thread(_any_match, given, live):
            expired = [c.digest for c in stored if now >= c.expires_ms]
            was_expired = await asyncio.to_thread(_any_match, given, expired)
            await self._failed(key, account_id)
            if was_expired:
                raise ExpiredCodeError(
                    "this pairing code has expired; get a fresh one with `planty pair` "
                    "or GET /api/v1/pairing"
                )
            raise InvalidCodeError("wrong pairing code")
        token, secret = await self._tokens.create(
            f"pairing:{account_id}", TokenScope.SERVER, origin="pairing"
        )
        pairing = Pairing(account_id, token.id, self._clock())
        if not await self._store.set_pairing(pairing):  # another instance won the race
            await self._tokens.revoke(token.id)
            self._pairing = await self._store.get_pairing()
            raise AlreadyPairedError("this broker was paired meanwhile")
        self._pairing = pairing
        await self._shared.clear_pairing_codes()  # single use
        self._mine = None
        log.info("broker paired with account %s (API token %s)", account_id, token.id)
        if self.audit is not None:  # no token acted: the pairing code did, for this account
            actor = Actor(f"pairing-code:{account_id}", None, client)
            await self.audit.record(
                actor, "pairing.claimed", account_id=account_id, token_id=token.id
            )
        return ClaimResult(pairing, token, secret)

    async def unpair(self) -> Pairing:
        """Undo the pairing and revoke the server's token; a new code is made."""
        old = await self._store.clear_pairing()
        self._pairing = None
        if old is None:
            raise NotPairedError("this broker is not paired")
        try:
            await self._tokens.revoke(old.token_id)
        except UnknownTokenError:
            log.warning("the pairing's API token %s was already gone", old.token_id)
        log.info("broker unpaired from account %s; its API token is revoked", old.account_id)
        return old

    # ------------------------------------------------------------ rate limit

    def _check_rate(self, client: str, account: str) -> None:
        retry = self.clients.retry_after(client)
        if retry is None and self.clients.count(client):
            retry = self.accounts.retry_after(account)  # only for clients that failed
        if retry is not None:
            self._limited_pending += 1
            self.rate_limited += 1
            raise RateLimitedError(
                f"too many wrong pairing codes; try again in {retry:.0f} s", retry
            )

    async def _failed(self, client: str, account: str) -> None:
        self.clients.failed(client)
        self.accounts.failed(account)
        self._failed_pending += 1
        self.failed_claims += 1
        now = self._monotonic()
        if now - self._window_started >= self._window_s:
            self._window_started, self._window_failures = now, 0
        self._window_failures += 1
        if self._window_failures == self._notice_at:  # once per window: guessing, maybe
            log.warning(
                "%d wrong pairing codes in %.0f s from %d client(s): someone may be guessing "
                "(each address and account is limited; see docs/security.md)",
                self._window_failures,
                self._window_s,
                len(self.clients),
            )
        log.info("pairing claim refused from %s", client)
        if self._saved_at is None or now - self._saved_at >= _SAVE_EVERY_S:
            self._saved_at = now
            await self._flush_counts()

    async def _flush_counts(self) -> None:
        """Refused and rate-limited claims (a flood) are added up here and written now and then."""
        counts = {FAILED: self._failed_pending, RATE_LIMITED: self._limited_pending}
        self._failed_pending = self._limited_pending = 0
        counts = {name: n for name, n in counts.items() if n}
        if counts:
            await self._shared.add_counts(counts)


def _any_match(code: str, digests: list[str]) -> bool:
    found = False
    for digest in digests:  # every one, so the time says nothing of which matched
        found = code_matches(code, digest) or found
    return found
