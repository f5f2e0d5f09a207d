"""MosquittoSupervisor: run our own Mosquitto as a child, keep it up, and stop it on exit.

    async with MosquittoSupervisor(layout, users_provider) as mqtt:
        connect to mqtt.internal_url as mqtt.gateway_username / mqtt.gateway_password
        await mqtt.update_users(new_hashes)      # after a device is added or removed

On entry it writes the CA/server certificate (once), the config, password and
ACL files, checks the ports, starts `mosquitto -c <conf>` in its own session
and waits until it accepts an MQTT login. A Mosquitto left running by a gateway
that was killed is adopted instead (so the QoS 1 backlog queued for the
gateway's persistent session survives). It is restarted with backoff if it
dies, and stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from planty_broker.backoff import Backoff
from planty_broker.errors import MqttServerError
from planty_broker.mqttserver import process
from planty_broker.mqttserver.atomic import load_or_create_secret
from planty_broker.mqttserver.errors import MosquittoStartError
from planty_broker.mqttserver.files import FileOwner, PasswordFile, write_mosquitto_files
from planty_broker.mqttserver.layout import (
    GATEWAY_USERNAME,
    PROBE_USERNAME,
    RESERVED_USERNAMES,
    MosquittoLayout,
    MqttAccount,
)
from planty_broker.mqttserver.passwords import hash_token, new_token
from planty_broker.mqttserver.pki import (
    RENEW_BEFORE,
    Pki,
    build_crl,
    cert_expiry,
    ensure_pki,
    finish_ca_rotation,
    renew_server_if_due,
    start_ca_rotation,
    switch_ca,
)
from planty_broker.mqttserver.ports import resolve_ports
from planty_broker.mqttserver.probe import CONNACK_ACCEPTED, mqtt_connect
from planty_broker.mqttserver.process import MosquittoProcess
from planty_broker.tasks import spawn

log = logging.getLogger("planty_broker.mqttserver")

UsersProvider = Callable[[], Awaitable[Mapping[str, str]]]
"""Returns every device's MQTT username (= device id) -> `$7$` password hash."""
CrlProvider = Callable[[], Awaitable[Iterable[int]]]
"""Returns the serial numbers of revoked device certificates (for the X.509 listener)."""


class MosquittoSupervisor:
    """Our own Mosquitto for the lifetime of an `async with` block (see the module docstring)."""

    def __init__(
        self,
        layout: MosquittoLayout,
        users_provider: UsersProvider,
        *,
        extra_accounts: Sequence[MqttAccount] = (),
        crl_provider: CrlProvider | None = None,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 15.0,
        poll_interval_s: float = 0.5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        cert_check_s: float = 3600.0,
    ) -> None:
        self._layout = layout
        self._cert_check_s = cert_check_s
        # The clock certificates are checked and issued on (tests set another before entering).
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._renew_task: asyncio.Task[None] | None = None
        self.certificate_renewals = 0
        self._users_provider = users_provider
        self._extra_accounts = tuple(extra_accounts)
        self._crl_provider = crl_provider
        self._revoked: frozenset[int] = frozenset()
        self._crl: tuple[frozenset[int], str] | None = None  # the last CRL built, by serials
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._poll_s = poll_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._stable_after_s = stable_after_s
        self._lock = asyncio.Lock()  # files + process changes, one at a time
        self._running: MosquittoProcess | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._binary = ""
        self._owner = FileOwner()
        self._pki: Pki | None = None
        self._ca_pem = ""
        self._gateway_password = ""
        self._probe_password = ""
        self._accounts: tuple[MqttAccount, ...] = ()
        self._devices: dict[str, str] = {}
        self._passwords = PasswordFile()
        # update_users calls are numbered; the newest valid mapping waits in _pending.
        self._asked = self._applied = 0
        self._pending: tuple[int, dict[str, str]] = (0, {})
        self._adopted = False
        self._restarts = 0
        self._reloads = 0

    # ------------------------------------------------------------ public view

    @property
    def layout(self) -> MosquittoLayout:
        return self._layout

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            raise RuntimeError("MosquittoSupervisor is not started")
        return self._pki

    @property
    def ca_pem(self) -> str:
        """The CA certificate devices must trust (PEM)."""
        return self._ca_pem

    @property
    def internal_url(self) -> tuple[str, int]:
        """(host, port) of the loopback plaintext listener for the gateway's own connection."""
        return self._layout.internal_host, self._layout.internal_port

    @property
    def gateway_username(self) -> str:
        return GATEWAY_USERNAME

    @property
    def gateway_password(self) -> str:
        return self._gateway_password

    @property
    def device_host(self) -> str:
        """The host name devices connect to (the server certificate's first name)."""
        return self._layout.public_host

    @property
    def device_port(self) -> int:
        """The TLS listener devices connect to."""
        return self._layout.port

    @property
    def reserved_usernames(self) -> frozenset[str]:
        """Usernames a device id must never take."""
        return RESERVED_USERNAMES | {a.username for a in self._extra_accounts}

    @property
    def pid(self) -> int | None:
        """The pid of the running Mosquitto, None while it is down."""
        return self._running.pid if self._running is not None else None

    def save_persistence(self) -> None:
        """Have Mosquitto write its persistence file now (SIGUSR1), e.g. once the gateway's
        subscriptions are acknowledged: a kill -9 before the next autosave then still finds
        the gateway's session, and queues the fleet's messages for it until it is back."""
        if self._running is not None:
            self._running.signal(signal.SIGUSR1)

    @property
    def adopted(self) -> bool:
        """True if the first Mosquitto we supervised was left running by a previous gateway."""
        return self._adopted

    @property
    def reloads(self) -> int:
        """How many credential reloads (SIGHUP) were sent."""
        return self._reloads

    @property
    def restarts(self) -> int:
        """How often Mosquitto died and was started again."""
        return self._restarts

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._binary = process.find_mosquitto(self._layout.mosquitto_bin)
        self._layout = await asyncio.to_thread(resolve_ports, self._layout)
        await asyncio.to_thread(self._prepare)
        self._devices = dict(await self._users_provider())
        if self._crl_provider is not None:
            self._revoked = frozenset(await self._crl_provider())
        self._stopping = False
        try:
            async with self._lock:
                if not await self._try_adopt():
                    process.check_ports_free(self._layout)
                    await asyncio.to_thread(self._write_files, self._devices)
                    await self._spawn_and_wait()
        except BaseException:
            await self._shutdown()
            raise
        self._watch_task = spawn("mosquitto-supervisor", self._watch)
        self._renew_task = spawn("certificate-renewal", self._renew_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    async def update_users(self, users: Mapping[str, str]) -> None:
        """Replace all device accounts (id -> `$7$` hash); removed or changed ones are kicked.

        Returns once Mosquitto enforces the new accounts: the supervisor's probe
        account gets a new password in the same files and must log in with it.
        Pass the full mapping. Calls made while a reload is under way coalesce: the
        latest mapping is written once and covers them all. Raises ValueError, with
        nothing written, for a bad id or hash or a reserved id.
        """
        devices = dict(users)
        self._asked += 1
        ticket = self._asked  # call order, whatever order the validations finish in
        # validate first (entries checked once: the table keeps the ones that passed)
        await asyncio.to_thread(self._passwords.render, devices, self._accounts)
        if ticket > self._pending[0]:
            self._pending = (ticket, devices)
        async with self._lock:
            if self._applied >= ticket:
                return  # a later mapping already went out and replaces this one
            ticket, devices = self._pending
            self._new_probe_account()
            await asyncio.to_thread(self._write_files, devices)
            self._devices, self._applied = devices, ticket
            running = self._running
            if running is None:
                return  # down: the watcher starts it again on these files
            # Mosquitto re-reads password + ACL files and re-checks every client
            # (about 0.5 s with 2,000 clients connected, during which it serves nobody).
            running.signal(signal.SIGHUP)
            self._reloads += 1
            try:
                await self._wait_ready(running, "the credential reload")
            except MosquittoStartError as exc:
                log.warning("Mosquitto did not confirm new credentials: %s", exc)

    # ------------------------------------------------------------ certificates

    def certificate_expiry(self) -> dict[str, float]:
        """When each certificate Mosquitto serves or trusts ends, unix seconds (by name:
        `server`, `ca`, and `ca_next` while a CA rotation is under way)."""
        out = {}
        for name, path in self._cert_files().items():
            end = cert_expiry(path)
            if end is not None:
                out[name] = end.timestamp()
        return out

    def expiry_warnings(self) -> list[str]:
        """One line per certificate that ends within `RENEW_BEFORE` (30 days) of the clock."""
        now = self.clock().timestamp()
        soon = RENEW_BEFORE.total_seconds()
        out = []
        for name, end in sorted(self.certificate_expiry().items()):
            if end - now < soon:
                days = (end - now) / 86400
                what = (
                    "renewal keeps failing, see the log"
                    if name == "server"
                    else "rotate the CA: planty pki rotate-ca (docs/security.md)"
                )
                out.append(f"certificate {name} expires in {days:.0f} days ({what})")
        return out

    async def renew_certificates(self) -> bool:
        """Re-issue the server certificate if it is due, and make Mosquitto serve the new one
        (its copy rewritten, SIGHUP, waited for); True if renewed. Runs every `cert_check_s`
        under the gateway's loop supervisor, so no certificate expires on a running gateway."""
        now = self.clock()
        async with self._lock:
            renewed = await asyncio.to_thread(renew_server_if_due, self.pki, now)
            if renewed:
                self._new_probe_account()
                await asyncio.to_thread(self._write_files, self._devices)
                running = self._running
                if running is not None:
                    running.signal(signal.SIGHUP)  # Mosquitto 2 reloads listener certificates
                    await self._wait_ready(running, "the certificate reload")
        if renewed:
            self.certificate_renewals += 1
            log.info(
                "server certificate renewed (now valid until %s) and reloaded by Mosquitto",
                cert_expiry(self.pki.cert_path),
            )
        for line in self.expiry_warnings():
            log.warning("%s", line)
        return renewed

    def _cert_files(self) -> dict[str, Path]:
        pki = self.pki
        files = {"server": pki.cert_path, "ca": pki.ca_cert_path}
        for name, (cert, _key) in (
            ("ca_next", pki.next_ca_paths),
            ("ca_previous", pki.previous_ca_paths),
        ):
            if cert.exists():
                files[name] = cert
        return files

    async def rotate_ca(self, step: str) -> str:
        """One step of a CA rotation (`start`, `switch`, `finish`; docs/security.md), made
        live: the trusted bundle, the CRLs, and at `switch` the server certificate signed by
        the new CA, reloaded by Mosquitto. Returns the phase now."""
        steps = {"start": start_ca_rotation, "switch": switch_ca, "finish": finish_ca_rotation}
        if step not in steps:
            raise ValueError(f"step must be one of {', '.join(steps)}, not {step!r}")
        async with self._lock:
            pki = self.pki
            if step == "switch":
                await asyncio.to_thread(switch_ca, pki, self.clock())
            else:
                await asyncio.to_thread(steps[step], pki)
            self._ca_pem = await asyncio.to_thread(pki.ca_pem)
            self._crl = None
            self._new_probe_account()
            await asyncio.to_thread(self._write_files, self._devices)
            running = self._running
            if running is not None:
                running.signal(signal.SIGHUP)  # re-reads certfile, cafile and crlfile
                await self._wait_ready(running, f"the CA rotation step {step}")
        phase = pki.ca_rotation_phase()
        log.info("CA rotation: %s done, phase %s", step, phase)
        return phase

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cert_check_s)
            try:
                await self.renew_certificates()
            except (OSError, MqttServerError) as exc:  # PkiError, MosquittoStartError
                log.error(
                    "server certificate renewal failed: %s; next try in %g s",
                    exc,
                    self._cert_check_s,
                )

    def set_revoked_serials(self, serials: Iterable[int]) -> None:
        """Revoked device certificates; written (as a CRL) and enforced by the next
        `update_users` call, which also re-reads the CRL for new connections.

        Mosquitto never re-checks a connected client's certificate: a live session of a
        revoked certificate must be cut separately (docs/security.md, "kick").
        """
        self._revoked = frozenset(serials)

    # ------------------------------------------------------------ internals

    def _prepare(self) -> None:
        self._layout.data_dir.mkdir(parents=True, exist_ok=True)
        self._layout, self._owner = process.plan_runtime(self._layout)
        layout = self._layout
        process.prepare_directory(layout.directory, self._owner)
        self._pki = ensure_pki(layout.pki_dir, layout.hostnames, self.clock())
        self._ca_pem = self._pki.ca_pem()
        self._gateway_password = load_or_create_secret(layout.gateway_secret_path)
        self._accounts = (
            MqttAccount(GATEWAY_USERNAME, hash_token(self._gateway_password)),
            *self._extra_accounts,
        )
        self._new_probe_account()

    def _new_probe_account(self) -> None:
        """A fresh probe password: when it logs in, Mosquitto has loaded the latest files."""
        self._probe_password = new_token()
        probe = MqttAccount(PROBE_USERNAME, hash_token(self._probe_password), grants=())
        others = [a for a in self._accounts if a.username != PROBE_USERNAME]
        self._accounts = (others[0], probe, *others[1:])

    def _write_files(self, devices: Mapping[str, str]) -> bool:
        crl_pem = None
        if self._layout.x509_port:
            revoked = self._revoked
            if self._crl is None or self._crl[0] != revoked:
                self._crl = (revoked, build_crl(self.pki, revoked))
            crl_pem = self._crl[1]
        return write_mosquitto_files(
            self._layout, self.pki, devices, self._accounts, self._owner, crl_pem, self._passwords
        )

    async def _try_adopt(self) -> bool:
        pid = process.find_adoptable(self._layout)
        if pid is None:
            return False
        running = MosquittoProcess(pid, time.monotonic(), None, self._layout.conf_path)
        if await asyncio.to_thread(self._write_files, self._devices):
            log.info(
                "restarting Mosquitto (pid %d) left by a previous run: its config changed", pid
            )
            await self._stop(running)
            return False
        running.signal(signal.SIGHUP)  # load this run's password and ACL files
        self._running = running
        try:
            await self._wait_ready(running)
        except MosquittoStartError as exc:
            log.warning("Mosquitto (pid %d) left by a previous run is unusable: %s", pid, exc)
            await self._stop(running)
            self._running = None
            return False
        self._adopted = True
        log.info("adopted Mosquitto (pid %d) left running by a previous gateway", pid)
        return True

    async def _spawn_and_wait(self) -> None:
        layout = self._layout
        process.rotate_log(layout)
        # A file, not a pipe: an adopted Mosquitto must outlive us without SIGPIPE.
        err = os.open(layout.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            child = await asyncio.create_subprocess_exec(
                self._binary,
                "-c",
                str(layout.conf_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # Ctrl-C reaches us, not it: we stop it in order
            )
        finally:
            os.close(err)
        running = MosquittoProcess(child.pid, time.monotonic(), child, layout.conf_path)
        self._running = running
        try:
            await self._wait_ready(running)
        except MosquittoStartError:
            await self._stop(running)
            self._running = None
            raise
        log.info("Mosquitto started (pid %d), devices on TLS port %d", child.pid, layout.port)

    async def _wait_ready(self, running: MosquittoProcess, what: str = "start-up") -> None:
        """Until our probe account logs in; fail fast if the process exits."""
        host, port = self.internal_url
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout_s
        last = "no answer"
        while True:
            if not running.alive():
                code = await running.wait(self._poll_s)
                raise MosquittoStartError(
                    f"mosquitto {process.describe_exit(code)} during {what}; "
                    f"its last words: {process.log_tail(self._layout)} "
                    f"(full log: {self._layout.log_path})"
                )
            try:
                async with asyncio.timeout(2.0):
                    code = await mqtt_connect(host, port, PROBE_USERNAME, self._probe_password)
                if code == CONNACK_ACCEPTED:
                    return
                last = f"login refused with CONNACK code {code}"
            except (OSError, TimeoutError) as exc:
                last = str(exc) or type(exc).__name__
            if loop.time() >= deadline:
                raise MosquittoStartError(
                    f"mosquitto did not accept our login on {host}:{port} within "
                    f"{self._start_timeout_s:g} s of {what} ({last}); its last words: "
                    f"{process.log_tail(self._layout)} (full log: {self._layout.log_path})"
                )
            await asyncio.sleep(0.05)

    async def _watch(self) -> None:
        """Restart Mosquitto with exponential backoff whenever it dies. Runs under the
        gateway's supervisor (tasks.spawn): if this loop itself fails, it is restarted."""
        backoff = Backoff(self._backoff_initial_s, self._backoff_max_s)
        while True:
            running = self._running
            if running is not None:
                code = await running.wait(self._poll_s)
                if self._stopping:
                    return
                self._running = None
                uptime = time.monotonic() - running.started_at
                if uptime >= self._stable_after_s:
                    backoff.reset()
                log.warning(
                    "Mosquitto (pid %d) %s after %.1f s; restarting in %.1f s; its last words: %s",
                    running.pid,
                    process.describe_exit(code),
                    uptime,
                    backoff.current,
                    process.log_tail(self._layout),
                )
            await backoff.sleep()
            async with self._lock:
                try:
                    await self._spawn_and_wait()
                except Exception as exc:  # not only MosquittoError: an OSError must not end us
                    log.error(
                        "Mosquitto did not restart: %s; next try in %.1f s", exc, backoff.current
                    )
                    continue
                self._restarts += 1

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._renew_task is not None:
            self._renew_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew_task
            self._renew_task = None
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._running is not None:
            await self._stop(self._running)
            self._running = None

    async def _stop(self, running: MosquittoProcess) -> None:
        """SIGTERM (Mosquitto saves its persistence file), then SIGKILL after the timeout."""
        running.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                await running.wait(0.05)
        except TimeoutError:
            log.warning(
                "Mosquitto (pid %d) ignored SIGTERM for %g s; killing it",
                running.pid,
                self._stop_timeout_s,
            )
            running.signal(signal.SIGKILL)
            await running.wait(0.05)
        with contextlib.suppress(FileNotFoundError, ValueError):
            if int(self._layout.pid_path.read_text().strip()) == running.pid:
                self._layout.pid_path.unlink()
