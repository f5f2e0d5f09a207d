"""Provisioning by claim (like AWS IoT fleet provisioning): factory-fresh devices get their
own credential while the operator keeps a claim window open.

Every factory device carries the same claim secret (the device authority's
`claim_secret`). The MQTT server forces client id = username, so a single shared
claim username would make claiming devices take over (and cut) each other's
sessions. Instead there are `slots` claim usernames, `planty-claim-0` ..
`planty-claim-<slots-1>`, all with the one claim secret; a device picks a slot at
random. Each slot may only publish
`<prefix>/provision/<slot>/request` and read `<prefix>/provision/<slot>/reply`
(and nothing under `devices/`), so a claimant never reads another slot's reply.
Two devices that pick the same slot at once cut each other; the loser retries
on another slot after a short random wait.

The slots are accounts of the desired state (`accounts()`): their grants always
hold; they accept the claim secret only while the window is open, so outside it
the claim secret is refused at CONNECT and closing the window cuts live claim
sessions. After answering, the gateway cuts the slot's session itself
(`authority.kick`) once `grace_s` has passed.

A request may carry the device's own token (`token`): the reply then holds no
secret, so even a claimant that raced into the same slot learns nothing useful.

Whoever holds the claim secret can ask for devices while the window is open, so
claims are bounded: at most `max_claims` per open window (each `open_window`
starts a fresh count; `window_full` beyond) and `claims_per_s` (a token bucket
as deep as one second's worth, in each instance's memory; `busy` beyond, a device
retries). Requests waiting to be served are bounded too (`MAX_PENDING`; beyond,
dropped). Every refusal is counted by reason (`refused_by`); `window_full` and
`busy` are not written to the event log one by one (a flood would fill it), a
warning is logged at most every `_WARN_EVERY_S`.

The window (open, until when, closed, claims taken in it and the most it takes) and
the counts of claims and refusals are kept in the store (`AccessStateStore`), so every
gateway instance of a deployment sees one window and one claim count (docs/scale-out.md):
each re-reads it every `REFRESH_S` and applies the claim accounts when it changed; the
first to see it run out marks it closed. A claim is taken from the window's count in
the store (atomically, so instances side by side never pass the cap) and given back if
it fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from planty_broker.domain.identity import ClaimWindow, CredentialEventKind, CredentialOrigin
from planty_broker.errors import CredentialError, MqttServerError, StoreError
from planty_broker.ports.device_authority import Account, AclGrant, DeviceAuthority
from planty_broker.ports.store import AccessStateStore, Store
from planty_broker.protocol import (
    CLAIM_SLOT_PREFIX,
    ClaimReply,
    ClaimRequest,
    ProtocolError,
    claim_slot_name,
    decode_claim_request,
    encode_provisioning,
    parse_provision_topic,
    provision_topic,
    valid_device_id,
)
from planty_broker.services.credentials.events import CredentialEvent, EventRecorder
from planty_broker.services.credentials.service import CredentialService
from planty_broker.services.registry import DeviceRegistry, RegistryError, now_ms
from planty_broker.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_PENDING = 256  # claim requests waiting to be served; beyond, dropped (counted)
MAX_CLAIMS_LIMIT = 100_000  # the most one window may be opened for
_WARN_EVERY_S = 10.0
_UNLOGGED = ("window_full", "busy")  # counted, not an event each
REFRESH_S = 1.0
CLAIMS = "provisioning.claims"
REFUSED = "provisioning.refused"
REFUSED_BY = "provisioning.refused."  # + the reason
REPLY_CACHE_S = 300.0
_REPLY_CACHE_MAX = 1000
K = CredentialEventKind
# The claim secret's generation: {"first_slot", "previous_first_slot", "previous_until_ms"},
# and in a cluster (an authority that `shares_claim_secrets`) the secrets themselves,
# "secret" and "previous_secret": every instance re-reads it every REFRESH_S.
_ROTATION_KEY = "provisioning.claim_rotation"


class ProvisioningError(CredentialError):
    """A claim window cannot be opened or used; the message is one line for the user."""


Publisher = Callable[[str, bytes], Awaitable[None]]


class ProvisioningService:
    """The claim window and the claim requests (see the module docstring)."""

    def __init__(
        self,
        credentials: CredentialService,
        registry: DeviceRegistry,
        shared: AccessStateStore,
        recorder: EventRecorder,
        *,
        authority: DeviceAuthority,
        prefix: str,
        slots: int = 64,
        default_window_s: float = 300.0,
        max_window_s: float = 86400.0,
        grace_s: float = 2.0,
        max_claims: int = 50,
        claims_per_s: float = 5.0,
        meta: Store | None = None,
        clock: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._credentials = credentials
        self._registry = registry
        self._shared = shared
        self.events = recorder
        self._prefix = prefix
        self.slots = slots
        self.default_window_s = default_window_s
        self.max_window_s = max_window_s
        self._grace_s = grace_s
        self._clock = clock
        self._authority = authority
        self._claim_hash: tuple[str, str] | None = None  # (secret, its verifier)
        # Slots of the current claim secret start here (0 or `slots`: a rotation moves the
        # new secret to the other half, so the previous one keeps its own usernames).
        self.first_slot = 0
        self._previous: tuple[int, int] | None = None  # (first slot, overlap end ms)
        self._previous_hash: tuple[str, str] | None = None
        self._rotation_seen: Any = None  # the record as last read or written (None: none)
        self.publish: Publisher | None = None
        self._window: ClaimWindow | None = None  # as last read from the store
        self._seen_open = False  # window_open at the last refresh, open or close
        self._replies: OrderedDict[tuple[str, str], tuple[bytes, float]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._gate = asyncio.Semaphore(4)
        # requests being answered, by (serial, req): a retry of one (its reply slow under
        # load) waits for that answer instead of being refused `already_claimed`
        self._answering: dict[tuple[str, str], asyncio.Future[bytes | None]] = {}
        self.max_claims = max_claims
        self.claims_per_s = claims_per_s
        self._meta = meta
        self._monotonic = monotonic
        self._burst = max(1.0, math.ceil(claims_per_s))
        self._bucket = self._burst
        self._bucket_at = monotonic()
        self._warned_at: float | None = None
        self._refused_pending: dict[str, int] = {}  # not yet added to the shared counters
        # This instance's, since it started (/metrics); GET /provisioning adds up all.
        self.claims = 0
        self.refused = 0
        self.refused_by: dict[str, int] = {}
        self.dropped = 0  # requests dropped because MAX_PENDING were waiting
        credentials.extra_accounts.append(self.accounts)

    # ------------------------------------------------------------ MQTT server view

    @property
    def claim_secret(self) -> str | None:
        """The factory claim secret; None when the MQTT server takes no claims."""
        return self._authority.claim_secret

    def accounts(self) -> list[Account]:
        """The claim slots: their grants always; the claim secret only while open (and the
        previous claim secret on its own slots while a rotation's overlap lasts)."""
        verifier = self._claim_verifier() if self.window_open else ""
        previous = self.previous_claim
        old = self._previous_verifier() if self.window_open and previous else ""
        out = []
        for n in range(2 * self.slots):
            slot = claim_slot_name(n)
            if self.first_slot <= n < self.first_slot + self.slots:
                password = verifier
            elif previous is not None and previous[0] <= n < previous[0] + self.slots:
                password = old
            else:
                password = ""
            grants = (
                AclGrant("deny", f"{self._prefix}/devices/#"),
                AclGrant("write", provision_topic(self._prefix, slot, "request")),
                AclGrant("read", provision_topic(self._prefix, slot, "reply")),
            )
            out.append(Account(slot, grants, password))
        return out

    @property
    def previous_claim(self) -> tuple[int, int] | None:
        """(first slot, overlap end ms) of the previous claim secret while it is accepted."""
        p = self._previous
        if p is None or self._clock() >= p[1]:
            return None
        return p

    def _previous_verifier(self) -> str:
        secret = getattr(self._authority, "previous_claim_secret", None)
        if not secret:
            return ""
        if self._previous_hash is None or self._previous_hash[0] != secret:
            self._previous_hash = (secret, self._authority.hash_secret(secret))
        return self._previous_hash[1]

    async def rotate_claim_secret(self, overlap_s: float) -> str:
        """A new claim secret on the other half of the slots; the current one stays accepted
        on its own slots for `overlap_s` (factory firmware flashed before keeps claiming).
        Returns the new secret (shown once to the operator)."""
        rotate = getattr(self._authority, "rotate_claim_secret", None)
        if rotate is None or self.claim_secret is None:
            raise ProvisioningError("rotating the claim secret needs the supervised Mosquitto")
        if not 0 <= overlap_s <= 366 * 86400:
            raise ProvisioningError("the overlap must be 0 s to 366 days")
        if self._shares_secrets:
            await self._load_rotation()  # another instance may have rotated a moment ago
        if self.previous_claim is not None:
            raise ProvisioningError(
                "a claim secret rotation is still in its overlap; end it first "
                "(planty devices claim-secret end-overlap)"
            )
        seen = self._rotation_seen
        new: str = rotate()
        until = self._clock() + int(overlap_s * 1000)
        self._previous = (self.first_slot, until) if overlap_s > 0 else None
        self.first_slot = self.slots - self.first_slot
        if not await self._save_rotation(seen):
            # Another instance rotated between our read and our write: its rotation stands
            # (compare-and-set on the record), ours is undone, and the caller is told.
            self._rotation_seen = None
            await self._load_rotation()
            await self._authority.apply()
            raise ProvisioningError(
                "another gateway instance rotated the claim secret at the same moment; its "
                "secret is the current one (GET /api/v1/provisioning/claim-credential)"
            )
        if self._previous is None:
            self._authority.end_claim_overlap()  # type: ignore[attr-defined]
        await self._authority.apply()
        log.info(
            "claim secret rotated: slots %d..%d take the new one; the previous one is accepted "
            "on its slots until %d",
            self.first_slot,
            self.first_slot + self.slots - 1,
            until,
        )
        return new

    async def end_claim_overlap(self) -> None:
        """Refuse the previous claim secret from now on. The record is written by
        compare-and-set, as a rotation is: if another instance wrote it between this one's
        read and write, the store keeps theirs; that is no error when theirs has no overlap
        either (both ended it), else ProvisioningError (a rotation meanwhile: its overlap
        stands, and ending it is the operator's next decision, not this request's)."""
        if self._shares_secrets:
            await self._load_rotation()  # another instance may have rotated or ended it
        seen = self._rotation_seen
        self._previous = None
        end = getattr(self._authority, "end_claim_overlap", None)
        if end is not None:
            end()
        if not await self._save_rotation(seen):
            self._rotation_seen = None
            await self._load_rotation()
            await self._authority.apply()
            if self.previous_claim is not None:
                raise ProvisioningError(
                    "another gateway instance rotated the claim secret at the same moment; "
                    "its overlap stands (GET /api/v1/provisioning/claim-credential); end it "
                    "again if it should end now"
                )
            return  # another instance ended it too
        await self._authority.apply()

    @property
    def _shares_secrets(self) -> bool:
        """A cluster: the secrets go through the store, so every instance has the same."""
        return bool(getattr(self._authority, "shares_claim_secrets", False))

    async def _save_rotation(self, seen: Any) -> bool:
        """Write this instance's rotation record if the store still holds `seen`: the record
        as this instance last read or wrote it (`_rotation_seen`; None: no record yet).
        False, nothing written, if another instance wrote the record in between: a
        compare-and-set (`Store.replace_meta`), so no write undoes another's unseen."""
        if self._meta is None:
            return True
        p = self._previous
        record: dict[str, Any] = {
            "first_slot": self.first_slot,
            "previous_first_slot": p[0] if p else None,
            "previous_until_ms": p[1] if p else None,
        }
        if self._shares_secrets:
            record["secret"] = self.claim_secret
            record["previous_secret"] = getattr(self._authority, "previous_claim_secret", None)
        if not await self._meta.replace_meta(_ROTATION_KEY, seen, record):
            return False
        self._rotation_seen = record
        return True

    def slot_live(self, slot: str) -> bool:
        """True if `slot` belongs to the current claim secret or to the previous one."""
        n = int(slot.removeprefix(CLAIM_SLOT_PREFIX))
        if self.first_slot <= n < self.first_slot + self.slots:
            return True
        p = self.previous_claim
        return p is not None and p[0] <= n < p[0] + self.slots

    def _claim_verifier(self) -> str:
        secret = self.claim_secret
        if not secret:
            return ""
        if self._claim_hash is None or self._claim_hash[0] != secret:
            self._claim_hash = (secret, self._authority.hash_secret(secret))
        return self._claim_hash[1]

    # ------------------------------------------------------------ the window

    @property
    def window_open(self) -> bool:
        """As last read from the store (every `REFRESH_S`, and at once on this instance)."""
        return self._window is not None and self._window.open_at(self._clock())

    @property
    def window_until_ms(self) -> int | None:
        return self._window.until_ms if self._window is not None and self.window_open else None

    async def counts(self) -> dict[str, Any]:
        """Claims and refusals by every instance (`refused_by` reason); the current window's
        claims and the most it takes (None while closed)."""
        await self._flush_refused()
        counts = await self._shared.counts()
        window = self._window
        is_open = window is not None and self.window_open
        return {
            "claims": counts.get(CLAIMS, 0),
            "refused": counts.get(REFUSED, 0),
            "refused_by": {
                name.removeprefix(REFUSED_BY): n
                for name, n in sorted(counts.items())
                if name.startswith(REFUSED_BY)
            },
            "window_claims": window.claims if window is not None and is_open else None,
            "window_max_claims": window.max_claims if window is not None and is_open else None,
        }

    async def _flush_refused(self) -> None:
        """Refusals (a flood, maybe) are added to the shared counters every `REFRESH_S`."""
        pending, self._refused_pending = self._refused_pending, {}
        if pending:
            counts = {REFUSED_BY + code: n for code, n in pending.items()}
            counts[REFUSED] = sum(pending.values())
            await self._shared.add_counts(counts)

    @property
    def window_claims(self) -> tuple[int, int]:
        """(claims taken in this window, the most it takes), as last read from the store."""
        w = self._window
        return (w.claims, w.max_claims) if w is not None else (0, self.max_claims)

    async def start(self) -> None:
        await self.refresh()
        self._spawn(self._refresher(), "claim-window")
        await self._load_rotation()

    async def _load_rotation(self) -> bool:
        """Read the rotation record (at start; in a cluster every REFRESH_S too: another
        instance may have rotated). True if what this instance accepts changed."""
        if self._meta is None:
            return False
        rotation = await self._meta.get_meta(_ROTATION_KEY)
        if not isinstance(rotation, dict):
            self._rotation_seen = rotation  # what a compare-and-set must find (None: none)
            founding = rotation is None and self._shares_secrets and bool(self.claim_secret)
            # The first instance: its secret is everybody's. Two starting at once: the first
            # write wins and the other adopts it at once.
            if founding and not await self._save_rotation(None):
                return await self._load_rotation()
            return False
        if rotation == self._rotation_seen:
            return False
        self._rotation_seen = rotation
        before = (self.first_slot, self._previous, self.claim_secret, self._previous_secret())
        first = rotation.get("first_slot")
        self.first_slot = first if first in (0, self.slots) else 0
        p_first, p_until = rotation.get("previous_first_slot"), rotation.get("previous_until_ms")
        ok = isinstance(p_first, int) and isinstance(p_until, int)
        self._previous = (p_first, p_until) if ok else None  # type: ignore[assignment]
        if self._shares_secrets:
            secret, previous = rotation.get("secret"), rotation.get("previous_secret")
            if isinstance(secret, str) and secret:
                self._authority.set_claim_secrets(  # type: ignore[attr-defined]
                    secret, previous if isinstance(previous, str) and previous else None
                )
            elif self.claim_secret:  # a record from a single gateway: add the secret
                await self._save_rotation(rotation)  # (another writer first: next refresh)
        return before != (
            self.first_slot, self._previous, self.claim_secret, self._previous_secret()
        )  # fmt: skip

    def _previous_secret(self) -> str | None:
        return getattr(self._authority, "previous_claim_secret", None)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)

    async def refresh(self) -> None:
        """Re-read the shared window; close it if it ran out; apply the claim accounts
        when what they allow changed (another instance opened or closed it)."""
        window = await self._shared.get_claim_window()
        now = self._clock()
        if window is not None and window.closed_ms is None and now >= window.until_ms:
            if await self._shared.close_claim_window(now, expired_only=True):
                log.info("claim window closed (its time ran out)")
            window = await self._shared.get_claim_window()
        self._window = window
        rotated = await self._load_rotation() if self._shares_secrets else False
        if rotated:
            log.info("claim secret rotation from another instance: slots %d.. take the new one",
                     self.first_slot)  # fmt: skip
        if self.window_open != self._seen_open or rotated:
            self._seen_open = self.window_open
            await self._authority.apply()

    async def open_window(
        self, duration_s: float | None = None, max_claims: int | None = None
    ) -> int:
        """Accept claims for `duration_s` (default `default_window_s`), at most `max_claims`
        of them (default `self.max_claims`; a fresh count); returns the end, unix ms."""
        if self.claim_secret is None:
            raise ProvisioningError(
                "provisioning by claim needs the supervised MQTT server (mqtt.url is set)"
            )
        duration = self.default_window_s if duration_s is None else duration_s
        if not 0 < duration <= self.max_window_s:
            raise ProvisioningError(
                f"the claim window must last more than 0 and at most {self.max_window_s:g} s "
                "(provisioning.max_window_s)"
            )
        most = self.max_claims if max_claims is None else max_claims
        if not 0 < most <= MAX_CLAIMS_LIMIT:
            raise ProvisioningError(f"max_claims must be 1..{MAX_CLAIMS_LIMIT}")
        now = self._clock()
        self._window = await self._shared.open_claim_window(
            now, now + int(duration * 1000), most
        )
        self._seen_open = True
        await self._authority.apply()
        log.info("claim window open for %.0f s, at most %d claims", duration, most)
        return self._window.until_ms

    async def close_window(self) -> None:
        """Refuse the claim secret from now on; live claim sessions are cut."""
        was_open = self.window_open
        await self._shared.close_claim_window(self._clock())
        self._window = await self._shared.get_claim_window()
        self._seen_open = False
        await self._authority.apply()
        if was_open:
            log.info("claim window closed")

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
                await self._flush_refused()
            except Exception as exc:  # the store or the MQTT server away: next round
                log.warning("claim window: re-reading it failed (%s); retrying", exc)
            if self._previous is not None and self._clock() >= self._previous[1]:
                log.info("claim secret overlap over: the previous claim secret is refused")
                try:
                    await self.end_claim_overlap()
                except ProvisioningError as exc:  # a rotation meanwhile: its overlap stands
                    log.info("claim secret overlap: %s", exc)
                except Exception as exc:  # the store away: next round
                    log.warning("claim secret overlap: ending it failed (%s); retrying", exc)

    # ------------------------------------------------------------ requests

    def handles(self, topic: str) -> bool:
        return topic.startswith(f"{self._prefix}/provision/")

    def handle(self, topic: str, payload: bytes) -> None:
        """A message on a provisioning topic (the MQTT link hands them here, not to ingest)."""
        slot = parse_provision_topic(self._prefix, topic)
        if slot is None or not self.slot_live(slot):
            return
        if len(self._tasks) >= MAX_PENDING:  # a flood: the claimant retries
            self.dropped += 1
            self._warn(f"{self.dropped} claim request(s) dropped: {MAX_PENDING} were waiting")
            return
        self._spawn(self._serve(slot, payload), "claim-request")

    async def _serve(self, slot: str, payload: bytes) -> None:
        async with self._gate:
            try:
                req = decode_claim_request(payload)
            except ProtocolError as exc:
                await self._refuse(slot, "?", None, "invalid_request", str(exc))
                return
            key = (req.serial, req.req)
            self._prune_replies()
            cached = self._replies.get(key)
            if cached is not None:  # the same request again: the reply was lost
                await self._send(slot, cached[0])
                return
            answering = self._answering.get(key)
            if answering is not None:  # the same request again while it is being answered
                raw_first = await asyncio.shield(answering)
                if raw_first is not None:
                    await self._send(slot, raw_first)
                return
            first: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            self._answering[key] = first
            try:
                reply = await self._claim(slot, req)
                raw = encode_provisioning(reply)
                if reply.ok:
                    self._replies[key] = (raw, asyncio.get_running_loop().time() + REPLY_CACHE_S)
                first.set_result(raw)
            finally:
                if not first.done():
                    first.set_result(None)
                del self._answering[key]
            await self._send(slot, raw)
        if reply.ok:
            await asyncio.sleep(self._grace_s)
            await self._cut(slot)

    async def _claim(self, slot: str, req: ClaimRequest) -> ClaimReply:
        try:
            await self.refresh()  # opened through another instance a moment ago?
        except Exception as exc:  # the store or the MQTT server away: the last view answers
            log.warning("claim window: re-reading it failed (%s)", exc)
        if not self.window_open:
            return await self._refuse(slot, req.req, req.serial, "window_closed", "no claim window")
        for d in self._registry.all():
            if d.attrs.get("serial") == req.serial:
                return await self._refuse(
                    slot,
                    req.req,
                    req.serial,
                    "already_claimed",
                    f"serial already claimed as {d.id}; the operator must remove it first",
                )
        device_id = req.id or _id_from_serial(req.serial)
        if device_id in self._registry:
            return await self._refuse(
                slot, req.req, req.serial, "id_taken", f"device id {device_id} is taken"
            )
        endpoint = self._authority.endpoint
        host, token_port, x509_port = endpoint.host, endpoint.port, endpoint.x509_port
        x509 = req.type == "x509"
        if x509 and not x509_port:
            return await self._refuse(
                slot, req.req, req.serial, "unavailable", "this broker issues no certificates"
            )
        wait = self._take()
        if wait is not None:
            return await self._refuse(
                slot, req.req, req.serial, "busy", f"too many claims at once; retry in {wait:.1f} s"
            )
        # Taken now, in the shared row: claims served side by side (on any instance) never
        # pass the cap; given back if the claim fails.
        taken = await self._shared.take_claim(self._clock())
        if taken is None:
            most = self.window_claims[1]
            return await self._refuse(
                slot,
                req.req,
                req.serial,
                "window_full",
                f"this claim window has taken its {most} claims; the operator "
                "must open a new one (provisioning.max_claims_per_window)",
            )
        self._window = taken
        ok = False
        try:
            reply = await self._register(slot, req, device_id, x509, host, token_port, x509_port)
            ok = reply.ok
        finally:
            if not ok:
                try:
                    await self._shared.give_back_claim()
                except StoreError as exc:
                    log.warning("claim not given back to the window's count: %s", exc)
        return reply

    def _take(self) -> float | None:
        """Take one claim from the per-second bucket; None if taken, else seconds to wait."""
        now = self._monotonic()
        self._bucket = min(self._burst, self._bucket + (now - self._bucket_at) * self.claims_per_s)
        self._bucket_at = now
        if self._bucket >= 1.0:
            self._bucket -= 1.0
            return None
        return (1.0 - self._bucket) / self.claims_per_s

    async def _register(
        self,
        slot: str,
        req: ClaimRequest,
        device_id: str,
        x509: bool,
        host: str,
        token_port: int,
        x509_port: int | None,
    ) -> ClaimReply:
        self._credentials.expect_origin(device_id, CredentialOrigin.CLAIM)
        try:
            record, token = await self._registry.add(
                device_id,
                req.name,
                token="" if x509 else req.token,
                attrs={"serial": req.serial, "claimed_ms": self._clock()},
            )
        except RegistryError as exc:
            return await self._refuse(slot, req.req, req.serial, "invalid_request", str(exc))
        cert_pem = key_pem = None
        if x509:
            try:
                issued = await self._credentials.issue_certificate(
                    device_id, CredentialOrigin.CLAIM
                )
            except CredentialError as exc:
                await self._registry.remove(device_id)
                return await self._refuse(slot, req.req, req.serial, "unavailable", str(exc))
            cert_pem, key_pem = issued.cert_pem, issued.key_pem
        self.claims += 1
        await self._shared.add_counts({CLAIMS: 1})
        await self.events.record(
            CredentialEvent(
                K.CLAIMED,
                device_id,
                self._clock(),
                data={"serial": req.serial, "slot": slot, "type": req.type},
            )
        )
        log.info(
            "device %s claimed (serial %s)", device_id, req.serial, extra={"device_id": device_id}
        )
        return ClaimReply(
            req=req.req,
            ok=True,
            id=record.id,
            token=None if (x509 or req.token) else token,
            cert_pem=cert_pem,
            key_pem=key_pem,
            host=host,
            port=x509_port if x509 else token_port,
        )

    async def _refuse(
        self, slot: str, req: str, serial: str | None, code: str, message: str
    ) -> ClaimReply:
        self.refused += 1
        self.refused_by[code] = self.refused_by.get(code, 0) + 1
        self._refused_pending[code] = self._refused_pending.get(code, 0) + 1
        if code in _UNLOGGED:
            self._warn(f"claims refused: {self.refused_by.get(code)} {code} so far ({message})")
        else:
            data: dict[str, Any] = {"reason": code, "slot": slot, "message": message}
            if serial is not None:
                data["serial"] = serial
            await self.events.record(
                CredentialEvent(K.CLAIM_REFUSED, None, self._clock(), data=data)
            )
            log.warning("claim refused on %s: %s (%s)", slot, code, message)
        reply = ClaimReply(req=req, ok=False, error=code, message=message)
        if req == "?":
            await self._send(slot, encode_provisioning(reply))
        return reply

    def _warn(self, message: str) -> None:
        now = self._monotonic()
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning("%s", message)

    async def _send(self, slot: str, raw: bytes) -> None:
        if self.publish is not None:
            await self.publish(provision_topic(self._prefix, slot, "reply"), raw)

    async def _cut(self, slot: str) -> None:
        """End the claim session on `slot` (the device authority's kick)."""
        if self.claim_secret is None or not self.window_open:
            return  # closed: the reload already cut it
        try:
            await self._authority.kick(slot)
        except (OSError, MqttServerError) as exc:
            log.warning("could not end the claim session on %s: %s", slot, exc)

    def _prune_replies(self) -> None:
        now = asyncio.get_running_loop().time()
        while self._replies:
            key, (_raw, until) = next(iter(self._replies.items()))
            if until > now and len(self._replies) <= _REPLY_CACHE_MAX:
                break
            del self._replies[key]

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("provisioning task failed: %r", task.exception())


def _id_from_serial(serial: str) -> str:
    """A device id from a factory serial: lower case, other characters as '-'."""
    cand = re.sub(r"[^a-z0-9-]+", "-", serial.lower()).strip("-")[:64]
    if not valid_device_id(cand) or cand.startswith("planty-"):
        cand = "dev-" + hashlib.sha256(serial.encode()).hexdigest()[:12]
    return cand
