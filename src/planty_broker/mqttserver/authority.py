"""`MosquittoAuthority`: the device-authority port on the supervised Mosquitto.

    authority = MosquittoAuthority(MosquittoLayout.from_settings(settings))
    authority.set_source(credentials.desired)     # before start: it is read at start
    async with authority:                          # starts (or adopts) Mosquitto
        await authority.apply()                    # after every credential change

How the port maps onto Mosquitto 2.0:
- verifiers are Mosquitto's own `$7$` PBKDF2-SHA512 password hashes (`passwords.py`),
  so the password file is written from the store without ever knowing a secret;
- `apply()` rewrites the password file, the CRL and the ACL files and sends SIGHUP,
  then waits until Mosquitto serves the new files (the supervisor's probe account);
  reloads are coalesced (`coalesce.py`): at most one per `reload_interval_s` (default
  1 s, `mqtt.reload_interval_s`) however many changes arrive; `apply(wait=False)`
  only asks for one;
- `kick(username)`: Mosquitto never re-checks a live session, so the gateway takes the
  session over: it logs in on its internal listener as that user, which closes the
  other session. With a secret it knows (the claim secret of an open claim slot) that
  is one login; otherwise a one-time password is installed for the login and removed
  again (two reloads, the first also enforcing the latest desired state);
- login events come from Mosquitto's log (`login_watch.py`), device listeners only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Self

from planty_broker.mqttserver import atomic
from planty_broker.mqttserver.atomic import load_or_create_secret
from planty_broker.mqttserver.coalesce import ReloadCoalescer
from planty_broker.mqttserver.layout import MosquittoLayout, MqttAccount
from planty_broker.mqttserver.login_watch import LoginAccepted, LoginLogParser, LogTail
from planty_broker.mqttserver.passwords import hash_token, new_token, verify_token
from planty_broker.mqttserver.pki import cert_info, issue_client_cert
from planty_broker.mqttserver.ports import resolve_ports
from planty_broker.mqttserver.probe import CONNACK_ACCEPTED, mqtt_connect
from planty_broker.mqttserver.supervisor import MosquittoSupervisor
from planty_broker.ports.device_authority import (
    AcceptedLogin,
    AccessSource,
    AuthorityUnavailableError,
    DesiredAccess,
    DeviceEndpoint,
    IssuedCertificate,
    Listener,
    LoginEvent,
    LoginSink,
    RefusedLogin,
)

log = logging.getLogger("planty_broker.mqttserver")

CLAIM_SECRET_FILE = "mqtt-claim.secret"  # noqa: S105 - a file name
# The claim secret before the last rotation, accepted until the overlap ends (0600).
PREVIOUS_CLAIM_SECRET_FILE = "mqtt-claim.previous.secret"  # noqa: S105 - a file name
KICK_TIMEOUT_S = 5.0


class MosquittoAuthority:
    """The port's Mosquitto adapter (see the module docstring); an async context manager."""

    def __init__(
        self,
        layout: MosquittoLayout,
        *,
        reload_interval_s: float = 1.0,
        **supervisor_options: float,
    ) -> None:
        self._layout = layout
        self._options = supervisor_options
        self._source: AccessSource = DesiredAccess
        self._sinks: list[LoginSink] = []
        self._overrides: dict[str, str] = {}  # username -> one-time hash (takeovers)
        self._applied: tuple[dict[str, str], frozenset[int]] | None = None
        self._apply = ReloadCoalescer(self._apply_once, min_interval_s=reload_interval_s)
        self._supervisor: MosquittoSupervisor | None = None
        self._tail: LogTail | None = None
        self._parser = LoginLogParser()
        self._claim_secret: str | None = None
        self._previous_claim_secret: str | None = None

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._layout.data_dir.mkdir(parents=True, exist_ok=True)
        self._layout = layout = await asyncio.to_thread(resolve_ports, self._layout)
        self._claim_secret = load_or_create_secret(layout.data_dir / CLAIM_SECRET_FILE)
        previous = layout.data_dir / PREVIOUS_CLAIM_SECRET_FILE
        if previous.exists():
            self._previous_claim_secret = load_or_create_secret(previous)
        wanted = self._source()
        accounts = [MqttAccount(a.username, "", a.grants) for a in wanted.accounts]

        async def users() -> Mapping[str, str]:
            return self._users(self._source())

        async def revoked() -> frozenset[int]:
            return self._source().revoked_serials

        supervisor = MosquittoSupervisor(
            layout, users, extra_accounts=accounts, crl_provider=revoked, **self._options
        )
        await supervisor.__aenter__()
        self._supervisor = supervisor
        self._tail = LogTail(supervisor.layout.log_path, self._on_log_line)
        await self._tail.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._apply.close()
        if self._tail is not None:
            await self._tail.stop()
            self._tail = None
        if self._supervisor is not None:
            await self._supervisor.__aexit__(exc_type, exc, tb)

    # ------------------------------------------------------------ the port

    @property
    def managed(self) -> bool:
        return True

    def certificate_expiry(self) -> dict[str, float]:
        """Server certificate and CA expiry, unix seconds (/metrics)."""
        return self._supervisor.certificate_expiry() if self._supervisor is not None else {}

    async def rotate_ca(self, step: str) -> str:
        """One step of a CA rotation (docs/security.md); returns the phase now."""
        return await self.supervisor.rotate_ca(step)

    def ca_rotation_phase(self) -> str:
        return self.supervisor.pki.ca_rotation_phase()

    def expiry_warnings(self) -> list[str]:
        """Certificates ending within 30 days (readiness warnings, the log)."""
        return self._supervisor.expiry_warnings() if self._supervisor is not None else []

    @property
    def supervisor(self) -> MosquittoSupervisor:
        """The running supervisor (pid, layout, PKI, the gateway's own account)."""
        if self._supervisor is None:
            raise RuntimeError("MosquittoAuthority is not started")
        return self._supervisor

    @property
    def endpoint(self) -> DeviceEndpoint:
        sup = self.supervisor
        return DeviceEndpoint(
            sup.device_host, sup.device_port, True, sup.ca_pem, self._layout.x509_port
        )

    @property
    def claim_secret(self) -> str | None:
        return self._claim_secret

    @property
    def previous_claim_secret(self) -> str | None:
        """The claim secret before the last rotation, while its overlap lasts."""
        return self._previous_claim_secret

    def rotate_claim_secret(self) -> str:
        """A new claim secret; the current one becomes the previous one (both kept 0600)."""
        data_dir = self._layout.data_dir
        new = new_token()
        if self._claim_secret:
            atomic.write_atomic(data_dir / PREVIOUS_CLAIM_SECRET_FILE, self._claim_secret + "\n")
            self._previous_claim_secret = self._claim_secret
        atomic.write_atomic(data_dir / CLAIM_SECRET_FILE, new + "\n")
        self._claim_secret = new
        return new

    def end_claim_overlap(self) -> None:
        """The previous claim secret is refused from now on (its file removed)."""
        self._previous_claim_secret = None
        (self._layout.data_dir / PREVIOUS_CLAIM_SECRET_FILE).unlink(missing_ok=True)

    @property
    def restarts(self) -> int | None:
        return self._supervisor.restarts if self._supervisor is not None else 0

    def hash_secret(self, secret: str) -> str:
        return hash_token(secret)

    def verify_secret(self, secret: str, verifier: str) -> bool:
        return verify_token(secret, verifier)

    async def issue_certificate(self, common_name: str, days: int) -> IssuedCertificate:
        if not self._layout.x509_port:
            raise AuthorityUnavailableError(
                "X.509 device certificates need the X.509 listener: set mqtt.x509 = true"
            )
        pki = self.supervisor.pki
        cert_pem, key_pem = await asyncio.to_thread(issue_client_cert, pki, common_name, days)
        info = cert_info(cert_pem)
        return IssuedCertificate(
            cert_pem, key_pem, info.serial, info.fingerprint, info.not_after_ms
        )

    def set_source(self, source: AccessSource) -> None:
        self._source = source

    @property
    def reloads(self) -> int:
        """How many coalesced reloads ran (each: files rewritten, one SIGHUP)."""
        return self._apply.runs

    async def apply(self, *, wait: bool = True) -> None:
        if wait:
            await self._apply()
        else:
            self._apply.request()

    async def kick(self, username: str) -> None:
        known = self._users(self._source()).get(username)
        secret = next(
            (
                s
                for s in (self._claim_secret, self._previous_claim_secret)
                if s and known and verify_token(s, known)
            ),
            None,
        )
        if secret and known:
            if self._wanted() != self._applied:
                await self.apply()
            await self._take_over(username, secret)
            return
        one_time = new_token()
        self._overrides[username] = hash_token(one_time)
        try:
            await self.apply()  # token sessions end here; the CRL is re-read
            await self._take_over(username, one_time)
        finally:
            del self._overrides[username]
            await self.apply()

    def watch_logins(self, sink: LoginSink) -> None:
        self._sinks.append(sink)

    # ------------------------------------------------------------ internals

    def _users(self, wanted: DesiredAccess) -> dict[str, str]:
        users = dict(wanted.devices)
        users.update((a.username, a.verifier) for a in wanted.accounts if a.verifier)
        users.update(self._overrides)
        return users

    def _wanted(self) -> tuple[dict[str, str], frozenset[int]]:
        wanted = self._source()
        return self._users(wanted), frozenset(wanted.revoked_serials)

    async def _apply_once(self) -> None:
        users, revoked = self._wanted()
        supervisor = self.supervisor
        supervisor.set_revoked_serials(revoked)
        await supervisor.update_users(users)
        self._applied = (users, revoked)

    async def _take_over(self, username: str, password: str) -> None:
        host, port = self.supervisor.internal_url
        try:
            async with asyncio.timeout(KICK_TIMEOUT_S):
                code = await mqtt_connect(host, port, username, password)
        except OSError as exc:  # ProbeError and timeouts too: logged, the reload stands
            log.warning("kicking %s failed: %s", username, exc)
            return
        if code != CONNACK_ACCEPTED:
            log.warning("kicking %s: login refused with code %d", username, code)

    def _device_listener(self, port: int | None) -> tuple[bool, Listener | None]:
        """(is a device listener or unknown, which one) for a listener port."""
        layout = self._layout
        if port is None:
            return True, None
        if port in (layout.port, layout.plaintext_loopback_port):
            return True, "token"
        if layout.x509_port and port == layout.x509_port:
            return True, "x509"
        return False, None  # the internal listener: readiness probes and takeovers

    def _on_log_line(self, line: str) -> None:
        seen = self._parser.feed(line)
        if seen is None:
            return
        device, listener = self._device_listener(seen.listener_port)
        if not device:
            return
        event: LoginEvent
        if isinstance(seen, LoginAccepted):
            event = AcceptedLogin(seen.username, seen.address, listener)
        else:
            event = RefusedLogin(seen.reason, seen.address, listener)
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                log.exception("a login event handler failed")
