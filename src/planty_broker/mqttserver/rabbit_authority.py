"""`RabbitAuthority`: the device-authority port on a RabbitMQ cluster (`rabbitmq_mqtt`).

How the port maps onto RabbitMQ 3.10 (measured in the spike, docs/scale-out.md):
- verifiers are RabbitMQ's own `rabbit_password_hashing_sha256` hashes computed here
  (`rabbit_passwords.py`), so users are created from the store without knowing a token;
- every account we manage carries the tag `planty`; `apply()` sends what changed since
  the last apply of *this* instance (the first apply compares with the server and
  removes `planty` users the store no longer has), so several gateway instances, each
  applying its own changes, never undo one another's;
- creations and updates go in one definitions import (any number of users, one call);
  removals in one bulk delete; a removed or changed account's live connections are
  closed at once (RabbitMQ keeps a live session through a password change);
- confinement: each device may configure, read and write only its own MQTT subscription
  queues (`mqtt-subscription-<id>qos0|1`), and on `amq.topic` read and write only routing
  keys under its own tree (`planty.v1.devices.<id>.`: RabbitMQ's MQTT plugin maps `/` to
  `.` and `.` to `/`, so a dot in an id is a slash in the routing key);
- `kick(username)` closes every connection of that user (management API);
- client id = username and the login reports come from RabbitMQ's event exchange, on the
  lease holder (`event_watch`, `rabbit_events.py`): RabbitMQ 3.10 cannot force the client
  id, so a connection whose client id is not its username has its user's connections
  closed; accepted and refused MQTT logins go to the `watch_logins` sinks;
- X.509 device certificates (with `pki`: the cluster's CA and its key) log in on the same
  TLS listener as tokens: the node checks the certificate against the CA and the CRL
  (`crl_dir`, re-read at every handshake) and takes the CN as the username
  (`mqtt.ssl_cert_login`), checking no password. So a device with a live certificate is a
  user (with its token's hash, or with none: nobody logs in as it with a password), and
  a revoked one is deleted with its connections closed. A withdrawn token of a device
  whose certificate stays closes only its connections without a client certificate.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from planty_broker.mqttserver.atomic import load_or_create_secret, write_atomic
from planty_broker.mqttserver.passwords import new_token
from planty_broker.mqttserver.pki import Pki, cert_info, issue_client_cert
from planty_broker.mqttserver.rabbit_events import RabbitEventWatch
from planty_broker.mqttserver.rabbit_mgmt import RabbitApi, RabbitApiError, q
from planty_broker.mqttserver.rabbit_passwords import (
    ALGORITHM,
    hash_secret,
    to_rabbit,
    verify_secret,
)
from planty_broker.mqttserver.rabbit_pki import write_crl
from planty_broker.ports.device_authority import (
    AccessSource,
    AclGrant,
    AuthorityBasics,
    AuthorityUnavailableError,
    DeviceEndpoint,
    IssuedCertificate,
    LoginEvent,
)

log = logging.getLogger("planty_broker.mqttserver")

TAG = "planty"
VHOST = "/"
EXCHANGE = "amq.topic"
CLAIM_SECRET_FILE = "mqtt-claim.secret"  # noqa: S105 - a file name
PREVIOUS_CLAIM_SECRET_FILE = "mqtt-claim.previous.secret"  # noqa: S105 - a file name


_SWAP = str.maketrans("/.", "./")


def routing_key(topic: str) -> str:
    """An MQTT topic as the MQTT plugin routes it on amq.topic (`/` <-> `.`)."""
    return topic.translate(_SWAP)


def filter_regex(topic_filter: str) -> str:
    """An MQTT topic filter (`+`, `#`) as a regex over routing keys."""
    out: list[str] = []
    levels = topic_filter.split("/")
    for n, level in enumerate(levels):
        if level == "#":
            out.append(r"(\..*)?$" if n else ".*")
            break
        part = "[^.]+" if level == "+" else re.escape(routing_key(level))
        out.append(("\\." if n else "") + part)
    else:
        out.append("$")
    return "^" + "".join(out)


@dataclass(frozen=True, slots=True)
class UserSpec:
    """One RabbitMQ user as we want it: its hash and permissions."""

    name: str
    password_hash: str
    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


class _Coalescer:
    """Run an async job; concurrent requests during a run share the next run."""

    def __init__(self, job: Callable[[], Awaitable[None]]) -> None:
        self._job = job
        self._lock = asyncio.Lock()
        self._started = 0
        self._completed = 0

    async def __call__(self) -> None:
        need = self._started + 1
        async with self._lock:
            if self._completed >= need:
                return
            self._started += 1
            await self._job()
            self._completed = self._started


class RabbitAuthority(AuthorityBasics):
    """The port's RabbitMQ adapter (see the module docstring); an async context manager."""

    def __init__(
        self,
        management_urls: Sequence[str],
        admin_user: str,
        admin_password: str,
        endpoint: DeviceEndpoint,
        *,
        topic_prefix: str = "planty/v1",
        secret_dir: Path | None = None,
        pki: Pki | None = None,
        crl_dir: Path | None = None,
    ) -> None:
        super().__init__(endpoint)  # the claim secret: read at start, from secret_dir
        self._api = RabbitApi(management_urls, admin_user, admin_password)
        self._prefix = topic_prefix
        self._secret_dir = secret_dir
        self._previous_claim_secret: str | None = None
        self._applied: dict[str, UserSpec] | None = None  # None: not synced with the server
        self._pki = pki  # None: no device certificates (tokens only)
        self._crl_dir = crl_dir
        self._applied_crl: frozenset[int] | None = None  # the serials last written
        self._apply = _Coalescer(self._apply_once)
        self.applies = 0

    async def __aenter__(self) -> Self:
        await self._api.__aenter__()
        if self._secret_dir is not None:
            self._claim_secret = load_or_create_secret(self._secret_dir / CLAIM_SECRET_FILE)
            previous = self._secret_dir / PREVIOUS_CLAIM_SECRET_FILE
            if previous.exists():
                self._previous_claim_secret = load_or_create_secret(previous)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._api.__aexit__()

    # ------------------------------------------------------------ the port

    @property
    def managed(self) -> bool:
        return True

    # ------------------------------------------------------------ the claim secrets
    #
    # Every instance must accept the same current and previous claim secret, or their
    # applies would fight over the claim slots' passwords. The provisioning service keeps
    # both in the store's rotation record (`shares_claim_secrets`), re-read every second,
    # and hands them here (`set_claim_secrets`); the files in `secret_dir` (0600) follow.

    shares_claim_secrets = True
    # A device certificate logs in only as an existing user: the credential service applies
    # when it issues one (Mosquitto needs no apply for a certificate from its CA).
    certificate_accounts = True

    @property
    def previous_claim_secret(self) -> str | None:
        """The claim secret before the last rotation, while its overlap lasts."""
        return self._previous_claim_secret

    def rotate_claim_secret(self) -> str:
        """A new claim secret; the current one becomes the previous one."""
        new = new_token()
        self.set_claim_secrets(new, self._claim_secret)
        return new

    def end_claim_overlap(self) -> None:
        """The previous claim secret is refused from now on."""
        if self._claim_secret:
            self.set_claim_secrets(self._claim_secret, None)

    def set_claim_secrets(self, current: str, previous: str | None) -> None:
        """The secrets another instance rotated to (or this one): kept in memory and in
        `secret_dir` (0600, atomic), so a restart before the store is read agrees."""
        changed = (current, previous) != (self._claim_secret, self._previous_claim_secret)
        self._claim_secret, self._previous_claim_secret = current, previous
        d = self._secret_dir
        if d is None or not changed:
            return
        write_atomic(d / CLAIM_SECRET_FILE, current + "\n")
        if previous:
            write_atomic(d / PREVIOUS_CLAIM_SECRET_FILE, previous + "\n")
        else:
            (d / PREVIOUS_CLAIM_SECRET_FILE).unlink(missing_ok=True)

    def hash_secret(self, secret: str) -> str:
        return hash_secret(secret)

    def verify_secret(self, secret: str, verifier: str) -> bool:
        return verify_secret(secret, verifier)

    async def issue_certificate(self, common_name: str, days: int) -> IssuedCertificate:
        if self._pki is None:
            raise AuthorityUnavailableError(
                "X.509 device certificates on the cluster need the CA's key: "
                "set cluster.ca_key_file"
            )
        cert_pem, key_pem = await asyncio.to_thread(issue_client_cert, self._pki, common_name, days)
        info = cert_info(cert_pem)
        return IssuedCertificate(
            cert_pem, key_pem, info.serial, info.fingerprint, info.not_after_ms
        )

    def set_source(self, source: AccessSource) -> None:
        self._source = source

    async def apply(self, *, wait: bool = True) -> None:
        await self._apply()

    async def kick(self, username: str) -> None:
        await self.apply()
        await self._close_connections([username])

    # watch_logins (AuthorityBasics) keeps the sinks; `event_watch` (on the lease holder)
    # reports to them.

    def event_watch(self, amqp_urls: Sequence[str]) -> RabbitEventWatch:
        """RabbitMQ's events (`rabbitmq_event_exchange`) as login reports, and a client id
        other than the username closed (`rabbit_events.py`); the lease holder runs it."""
        return RabbitEventWatch(amqp_urls, self._report_login, self.close_connections_of)

    def _report_login(self, event: LoginEvent) -> None:
        for sink in self._sinks:
            sink(event)

    async def close_connections_of(self, username: str, reason: str) -> None:
        """Close every connection of `username` now (RabbitMQ logs `reason`)."""
        await self._api.call(
            "DELETE",
            f"/api/connections/username/{q(username)}",
            ok=(404,),
            headers={"X-Reason": reason},
        )

    # ------------------------------------------------------------ internals

    def _device(self, device_id: str, raw: str) -> UserSpec:
        """A device user: `raw` is its RabbitMQ password hash, "" for a certificate-only
        device (RabbitMQ refuses every password login of a user without a hash)."""
        rk = re.escape(routing_key(device_id))
        queues = f"mqtt-subscription-{rk}qos[01]"
        tree = f"^{re.escape(routing_key(self._prefix))}\\.devices\\.{rk}\\."
        return UserSpec(
            device_id, raw, f"^{queues}$", f"^({queues}|amq\\.topic)$",
            f"^({queues}|amq\\.topic)$", tree, tree,
        )  # fmt: skip

    def _account(self, username: str, verifier: str, grants: Sequence[AclGrant]) -> UserSpec | None:
        raw = to_rabbit(verifier)
        if raw is None:
            return None
        reads = [filter_regex(g.topic) for g in grants if g.access in ("read", "readwrite")]
        writes = [filter_regex(g.topic) for g in grants if g.access in ("write", "readwrite")]
        queues = f"mqtt-subscription-{re.escape(routing_key(username))}qos[01]"

        def joined(rs: list[str]) -> str:
            return "|".join(f"(?:{r})" for r in rs) if rs else "^$"

        return UserSpec(
            username, raw, f"^{queues}$", f"^({queues}|amq\\.topic)$",
            f"^({queues}|amq\\.topic)$", joined(writes), joined(reads),
        )  # fmt: skip

    def _wanted(self) -> dict[str, UserSpec]:
        wanted = self._source()
        out: dict[str, UserSpec] = {}
        for device_id, verifier in wanted.devices.items():
            raw = to_rabbit(verifier)
            if raw is not None:  # else a verifier of another adapter: cannot log in here
                out[device_id] = self._device(device_id, raw)
        if self._pki is not None:
            for device_id in wanted.certificate_devices:
                if device_id not in out:
                    out[device_id] = self._device(device_id, "")
        for a in wanted.accounts:
            if a.verifier:
                spec = self._account(a.username, a.verifier, a.grants)
                if spec is not None:
                    out[a.username] = spec
        return out

    async def _server_users(self) -> dict[str, str]:
        """Our users on the server (tag `planty`): name -> password hash."""
        users = await self._api.call("GET", "/api/users")
        out: dict[str, str] = {}
        for u in users or []:
            tags = u.get("tags") or []
            if isinstance(tags, str):
                tags = [t for t in tags.split(",") if t]
            if TAG in tags:
                out[str(u["name"])] = str(u.get("password_hash", ""))
        return out

    async def _apply_once(self) -> None:
        wanted = self._wanted()
        self.applies += 1
        await self._write_crl()  # first: a certificate withdrawn below cannot log in again
        if self._applied is None:  # first apply: against what the server holds
            hashes = await self._server_users()
            changed = [s for s in wanted.values() if hashes.get(s.name) != s.password_hash]
            removed = [n for n in hashes if n not in wanted]
        else:
            before = self._applied
            hashes = {n: s.password_hash for n, s in before.items()}
            changed = [s for s in wanted.values() if before.get(s.name) != s]
            removed = [n for n in before if n not in wanted]
        # A token withdrawn or replaced: its sessions end (RabbitMQ keeps them through a
        # password change). Withdrawn while a certificate stays: only the sessions without
        # a client certificate. A token added beside a certificate withdraws nothing.
        kick = [
            s.name
            for s in changed
            if hashes.get(s.name) and hashes[s.name] != s.password_hash and s.password_hash
        ]
        token_only = [s.name for s in changed if hashes.get(s.name) and not s.password_hash]
        if changed:
            await self._api.call("POST", "/api/definitions", self._definitions(changed))
        if removed:
            await self._remove_users(removed)
        if removed or kick:
            await self._close_connections([*removed, *kick])
        if token_only:
            await self._close_connections(token_only, without_certificate=True)
        self._applied = wanted
        if changed or removed:
            log.info("rabbitmq: %d account(s) written, %d removed", len(changed), len(removed))

    async def _remove_users(self, names: Sequence[str]) -> None:
        """Delete users; one another instance removed already is no error (several
        instances apply the same change: a closed claim window, a removed device)."""
        try:
            await self._api.call("POST", "/api/users/bulk-delete", {"users": list(names)})
        except RabbitApiError as exc:
            log.info("rabbitmq: bulk delete refused (%s); deleting one by one", exc)
            for name in names:
                await self._api.call("DELETE", f"/api/users/{q(name)}", ok=(404,))

    def _definitions(self, specs: Sequence[UserSpec]) -> dict[str, Any]:
        return {
            "users": [
                {
                    "name": s.name,
                    "password_hash": s.password_hash,
                    "hashing_algorithm": ALGORITHM,
                    "tags": [TAG],
                    "limits": {},
                }
                for s in specs
            ],
            "permissions": [
                {
                    "user": s.name,
                    "vhost": VHOST,
                    "configure": s.configure,
                    "write": s.write,
                    "read": s.read,
                }
                for s in specs
            ],
            "topic_permissions": [
                {
                    "user": s.name,
                    "vhost": VHOST,
                    "exchange": EXCHANGE,
                    "write": s.topic_write,
                    "read": s.topic_read,
                }
                for s in specs
            ],
        }

    async def _write_crl(self) -> None:
        """The CA's CRL where the nodes read it, when the revoked serials changed since this
        instance last wrote it (so an instance that saw fewer revocations than another
        does not write an older list over a newer one; the first apply writes it)."""
        if self._pki is None or self._crl_dir is None:
            return
        serials = frozenset(self._source().revoked_serials)
        if serials == self._applied_crl:
            return
        await asyncio.to_thread(write_crl, self._pki, self._crl_dir, serials)
        self._applied_crl = serials

    async def _close_connections(
        self, usernames: Sequence[str], *, without_certificate: bool = False
    ) -> None:
        close = self._close_uncertified if without_certificate else self._close_all
        results = await asyncio.gather(*(close(u) for u in usernames), return_exceptions=True)
        for u, r in zip(usernames, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("rabbitmq: closing the sessions of %s failed: %s", u, r)

    async def _close_all(self, username: str) -> None:
        await self._api.call("DELETE", f"/api/connections/username/{q(username)}", ok=(404,))

    async def _close_uncertified(self, username: str) -> None:
        """Close the user's connections that presented no client certificate (a password
        login); its certificate sessions stay."""
        found = await self._api.call("GET", f"/api/connections/username/{q(username)}", ok=(404,))
        for c in found if isinstance(found, list) else []:
            if not c.get("peer_cert_subject"):
                await self._api.call("DELETE", f"/api/connections/{q(str(c['name']))}", ok=(404,))
