"""A factory-fresh device claiming its own credential (docs/protocol.md, "Provisioning by claim").

The device knows only the fleet's claim secret, the broker's CA and where to
connect. It picks a random claim slot (`planty-claim-<n>`), subscribes to the
slot's reply topic, publishes `{"req", "serial", "type"}` on the request topic
and waits for the reply with its `req`. A refused login (no claim window), a
cut session (another device in the same slot) or no reply in time are retried
on another slot with jittered backoff until `give_up_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
from dataclasses import dataclass, field
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

from planty_broker.protocol import (
    DEFAULT_PREFIX,
    ClaimReply,
    ClaimRequest,
    ProtocolError,
    Topics,
    claim_slot_name,
    decode_claim_reply,
    encode_provisioning,
    provision_topic,
)
from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.profile import DeviceCredentials, DeviceProfile, tls_context
from planty_broker.simulator.provision import SimulatorError

log = logging.getLogger(__name__)
_GMQTT_LOG = logging.getLogger("planty_broker.simulator.gmqtt")
# Refusals a device retries (with backoff) until it gives up: the window may open, the
# broker may take claims again (too many at once), the operator may open a new window.
RETRIED = ("window_closed", "busy", "window_full")


class ClaimError(SimulatorError):
    """Claiming failed for good (refused by the broker, or no answer until `give_up_s`)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ClaimCredentials:
    """What factory firmware carries: where to connect, the CA, the shared claim secret."""

    host: str
    port: int
    ca_pem: str = field(repr=False)
    password: str = field(repr=False)
    slots: int = 64
    prefix: str = DEFAULT_PREFIX
    first_slot: int = 0  # claim-credential's `first_slot` (it moves at a claim secret rotation)
    # claim-credential's `mqtt.endpoints` on a cluster: every node, host:port first. A claim
    # attempt that cannot reach one node tries the next; the credential keeps them.
    endpoints: tuple[tuple[str, int], ...] = ()

    def endpoint(self, n: int) -> tuple[str, int]:
        """The `n`-th node to try (host:port first, then the others), round robin."""
        every = [(self.host, self.port)]
        every += [(h, int(p)) for h, p in self.endpoints if (h, int(p)) not in every]
        return every[n % len(every)]

    @classmethod
    def from_claim_credential(cls, data: dict[str, Any]) -> ClaimCredentials:
        """From GET /api/v1/provisioning/claim-credential's answer."""
        m = data["mqtt"]
        return cls(
            m["host"], m["port"], m["ca_pem"], data["password"], data["slots"],
            first_slot=data.get("first_slot", 0),
            endpoints=tuple((h, int(p)) for h, p in m.get("endpoints") or ()),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FactoryIdentity:
    """A factory-fresh device: its serial, the credential type it asks for, its claim secret."""

    claim: ClaimCredentials
    serial: str
    type: str = "token"
    device_id: str | None = None  # ask for this id (else the broker derives one)
    own_token: bool = False  # send its own token: the reply then carries no secret
    attempt_timeout_s: float = 5.0
    retry_min_s: float = 0.2
    retry_max_s: float = 2.0


class _Attempt:
    """One claim session on one slot."""

    def __init__(self, slot: str, password: str, request: ClaimRequest, prefix: str) -> None:
        self.slot = slot
        self.request = request
        self.reply: asyncio.Future[ClaimReply] = asyncio.get_running_loop().create_future()
        self.lost = asyncio.Event()
        self.reply_topic = provision_topic(prefix, slot, "reply")
        self.request_topic = provision_topic(prefix, slot, "request")
        self.client = gmqtt.Client(slot, clean_session=True, logger=_GMQTT_LOG)
        self.client.set_auth_credentials(slot, password)
        self.client.set_config({"reconnect_retries": 0})
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_a, **_k: self.lost.set()

    def _on_message(self, _c: Any, topic: str, payload: bytes, _qos: int, _p: Any) -> int:
        if topic == self.reply_topic and not self.reply.done():
            with contextlib.suppress(ProtocolError):
                reply = decode_claim_reply(payload)
                if reply.req == self.request.req:
                    self.reply.set_result(reply)
        return 0

    async def run(self, host: str, port: int, tls: ssl.SSLContext, timeout_s: float) -> ClaimReply:
        try:
            async with asyncio.timeout(timeout_s):
                await self.client.connect(host, port, ssl=tls, keepalive=30, version=MQTTv311)
                self.client.subscribe(self.reply_topic, qos=1)
                await asyncio.sleep(0.05)  # the SUBACK; a reply never beats it in Mosquitto
                self.client.publish(self.request_topic, encode_provisioning(self.request), qos=1)
                lost: asyncio.Future[Any] = asyncio.ensure_future(self.lost.wait())
                reply: asyncio.Future[Any] = self.reply
                try:
                    await asyncio.wait({reply, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                if self.reply.done():
                    return self.reply.result()
                raise ConnectionError(f"claim session on {self.slot} was cut")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.disconnect(), 1.0)


async def claim(identity: FactoryIdentity, give_up_s: float = 60.0) -> DeviceCredentials:
    """Claim a credential for a factory-fresh device; raises `ClaimError` when refused for good.

    `window_closed` (and a refused login, which is what a closed window looks like),
    `busy` and `window_full` are retried until `give_up_s`: a device powered on before
    the operator opens the window gets its credential once it opens.
    """
    c = identity.claim
    tls = tls_context(c.ca_pem)
    rng = random.Random()  # noqa: S311 - slot choice and jitter, not security
    own = secrets.token_urlsafe(24) if identity.own_token else None
    request = ClaimRequest(
        req=secrets.token_hex(8),
        serial=identity.serial,
        type=identity.type,
        id=identity.device_id,
        token=own,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_s
    last = "no attempt"
    attempt = 0
    node = 0  # which of the credential's nodes (a cluster) this attempt uses
    while loop.time() < deadline:
        attempt += 1
        slot = claim_slot_name(c.first_slot + rng.randrange(c.slots))
        host, port = c.endpoint(node)
        try:
            reply = await _Attempt(slot, c.password, request, c.prefix).run(
                host, port, tls, identity.attempt_timeout_s
            )
        except (OSError, TimeoutError, gmqtt.MQTTConnectError, ConnectionError) as exc:
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not isinstance(exc, gmqtt.MQTTConnectError):
                node += 1  # not reached, or cut: the next node of a cluster (if any)
        else:
            if reply.ok:
                return _credentials(reply, own, c)
            last = f"{reply.error}: {reply.message}"
            if reply.error not in RETRIED:
                raise ClaimError(f"claim of {identity.serial} refused: {last}", reply.error)
        ceiling = min(identity.retry_max_s, identity.retry_min_s * 2 ** min(attempt, 8))
        await asyncio.sleep(rng.uniform(ceiling / 2, ceiling))
    raise ClaimError(f"claim of {identity.serial} gave up after {give_up_s:g} s ({last})")


def _credentials(reply: ClaimReply, own: str | None, c: ClaimCredentials) -> DeviceCredentials:
    if reply.id is None:
        raise ClaimError("the claim reply names no device id")
    token = own or reply.token or ""
    if not token and not (reply.cert_pem and reply.key_pem):
        raise ClaimError("the claim reply carries no credential")
    return DeviceCredentials(
        device_id=reply.id,
        token=token if not reply.cert_pem else "",
        host=c.host,
        port=reply.port or c.port,
        tls=True,
        ca_pem=c.ca_pem,
        cert_pem=reply.cert_pem,
        key_pem=reply.key_pem,
        alternates=tuple(e for e in c.endpoints if e != (c.host, c.port)),
    )


class FactoryDevice:
    """A simulated device fresh from the factory: it claims its credential, then runs.

    `start()` returns at once; the device keeps trying to claim (a closed window is
    retried until `give_up_s`) and then runs as a `SimDevice` (`device`).
    """

    def __init__(
        self,
        identity: FactoryIdentity,
        profile: DeviceProfile | None = None,
        *,
        topics: Topics | None = None,
        give_up_s: float = 60.0,
    ) -> None:
        self.identity = identity
        self.profile = profile
        self._topics = topics
        self._give_up_s = give_up_s
        self.device: SimDevice | None = None
        self.credentials: DeviceCredentials | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FactoryDevice:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"sim-factory-{self.identity.serial}"
            )

    async def _run(self) -> None:
        try:
            self.credentials = await claim(self.identity, self._give_up_s)
        except ClaimError as exc:
            self.last_error = str(exc)
            return
        self.device = SimDevice(self.credentials, self.profile, topics=self._topics)
        await self.device.start()

    async def wait_claimed(self, timeout_s: float = 30.0) -> DeviceCredentials:
        """The claimed credentials; `ClaimError` if claiming failed or took too long."""
        assert self._task is not None, "start() first"
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._task)
        except TimeoutError:
            raise ClaimError(f"{self.identity.serial} not claimed after {timeout_s:g} s") from None
        if self.credentials is None:
            raise ClaimError(self.last_error or "claim failed")
        return self.credentials

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.device is not None:
            await self.device.stop()
