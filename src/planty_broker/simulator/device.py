"""`SimDevice`: one virtual ESP32 that speaks PROTOCOL.md over a real MQTT connection.

Lifecycle: `start()` boots it (boot counter + 1 after the first, `seq` back to 0)
and keeps it connected, reconnecting with jittered exponential backoff;
`stop()` says goodbye (retained offline status, clean DISCONNECT); `kill()` is a
power cut (TCP dropped without DISCONNECT, so the broker publishes the last will).
Every publish is QoS 1 and counted twice: when sent and when PUBACKed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import fields
from typing import Any, Self

from planty_broker.protocol import (
    Ack,
    Channel,
    Command,
    OtaLast,
    OtaSupport,
    ProtocolError,
    Status,
    Telemetry,
    Topics,
    credential_from_args,
    decode_command,
    encode,
    goodbye,
    offline_will,
)
from planty_broker.simulator.firmware import ActuatorState, Execution, Firmware
from planty_broker.simulator.link import Kind, LinkError, MqttLink
from planty_broker.simulator.ota import OtaReceiver, Staged
from planty_broker.simulator.plant import PlantModel
from planty_broker.simulator.profile import (
    MALFORMED_PAYLOADS,
    DeviceCredentials,
    DeviceProfile,
    Faults,
)
from planty_broker.simulator.stats import DeviceOfflineError, DeviceState, DeviceStats
from planty_broker.text import plural

__all__ = ["DeviceOfflineError", "DeviceState", "DeviceStats", "SimDevice"]

log = logging.getLogger(__name__)

_COUNTER_NAME = {
    Kind.STATUS: "status",
    Kind.TELEMETRY: "telemetry",
    Kind.ACK: "acks",
    Kind.OTA: "ota_acks",
}


class SimDevice:
    """One simulated device; use as `async with SimDevice(creds, profile) as dev:`."""

    def __init__(
        self,
        credentials: DeviceCredentials,
        profile: DeviceProfile | None = None,
        *,
        topics: Topics | None = None,
        connect_gate: asyncio.Semaphore | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = credentials
        self.profile = profile or DeviceProfile()
        self.faults: Faults = self.profile.faults  # assign a new Faults to change behaviour live
        self._topics = topics or Topics()
        self._gate = connect_gate
        self._rng = random.Random(seed)  # noqa: S311 - simulation noise, not security
        self._clock = clock
        plant_rng = random.Random(None if seed is None else seed + 1)  # noqa: S311
        # Each device is a pot of its own (moisture, drying, warmth, light), as in a real fleet.
        plant = PlantModel.varied(plant_rng, time_scale=self.profile.time_scale)
        self._fw = Firmware(
            self.profile.sensors,
            self.profile.actuators,
            float(self.profile.interval_s),
            clock,
            self.profile.dedup_memory,
            plant,
        )
        self._status_topic = self._topics.device(credentials.device_id, Channel.STATUS)
        self._telemetry_topic = self._topics.device(credentials.device_id, Channel.TELEMETRY)
        self._cmd_topic = self._topics.device(credentials.device_id, Channel.CMD)
        self._ack_topic = self._topics.device(credentials.device_id, Channel.ACK)
        self._ota_topic = self._topics.device(credentials.device_id, Channel.OTA)
        self._ota_ack_topic = self._topics.device(credentials.device_id, Channel.OTA_ACK)
        self.fw = self.profile.fw  # the version it runs: an update changes it
        self._ota = OtaReceiver(self.fw)
        self._ota_last: OtaLast | None = None
        self._switch_to: Staged | None = None
        self._counts: Counter[str] = Counter()
        self._state = DeviceState.OFF
        self._task: asyncio.Task[None] | None = None
        self._link: MqttLink | None = None
        self._online = asyncio.Event()
        self._window = asyncio.Event()  # set on every PUBACK: room in the in-flight window
        self._reschedule = asyncio.Event()  # set when `config` changed interval_s
        self._timers: set[asyncio.TimerHandle] = set()
        self._boot = self.profile.first_boot - 1
        self._seq = 0
        self._ticks = 0
        self._silent = False
        self.last_error: str | None = None
        # Credential rotation: the previous credential stays as a fallback until the new one
        # has logged in; telemetry pauses while the link is switched.
        self._fallback: DeviceCredentials | None = None
        self._use_fallback = False
        self._switching = False
        self._credential_acks: dict[str, Ack] = {}
        self.credential_id: str | None = None  # the id of the last credential received
        self._switch_task: asyncio.Task[None] | None = None
        self._endpoint = 0  # which of the credentials' endpoints to try next
        self.acked_seqs: list[int] = []  # telemetry seqs PUBACKed (profile.track_acks)

    # ------------------------------------------------------------ read-only views

    @property
    def device_id(self) -> str:
        return self.credentials.device_id

    @property
    def state(self) -> DeviceState:
        return self._state

    @property
    def boot(self) -> int:
        return self._boot

    @property
    def next_seq(self) -> int:
        """The `seq` the next telemetry message of this boot will carry."""
        return self._seq

    @property
    def interval_s(self) -> float:
        return self._fw.interval_s

    @property
    def silent(self) -> bool:
        return self._silent

    @property
    def inflight(self) -> int:
        return self._link.inflight if self._link is not None else 0

    @property
    def stats(self) -> DeviceStats:
        return DeviceStats(**{f.name: self._counts[f.name] for f in fields(DeviceStats)})

    def executions(
        self, *, command_id: str | None = None, action: str | None = None
    ) -> list[Execution]:
        """Actions that really ran, oldest first, optionally filtered."""
        return [
            e
            for e in self._fw.log
            if (command_id is None or e.command_id == command_id)
            and (action is None or e.action == action)
        ]

    def actuator(self, name: str) -> ActuatorState:
        return self._fw.actuator(name)

    def readings(self) -> dict[str, float]:
        """What the sensors read right now."""
        return self._fw.readings()

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Boot the device and keep it connected in the background (returns at once)."""
        if self._task is not None:
            if not self._task.done():
                return
            await self._halt()  # it gave up (bad CA) or crashed: boot it again
        self._boot += 1
        self._seq = 0
        self._fw.power_cycle()
        self._task = asyncio.create_task(self._run(), name=f"sim-device-{self.device_id}")

    async def wait_online(self, timeout_s: float = 10.0) -> None:
        """Wait until connected and status published; else `DeviceOfflineError` with the reason."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._online.wait()
        except TimeoutError:
            why = self.last_error or f"state {self._state.value}"
            raise DeviceOfflineError(
                f"{self.device_id} not online after {timeout_s:g} s: {why}"
            ) from None

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Graceful shutdown: retained `{"online": false, "reason": "shutdown"}`, wait for its
        PUBACK, DISCONNECT (the broker records a clean offline, not the last will)."""
        link = self._link
        await self._halt()
        if link is not None and link.connected:
            self._publish(link, self._status_topic, goodbye(), Kind.STATUS, retain=True)
            await link.wait_acked(timeout_s)
            await link.close()

    async def kill(self) -> None:
        """Power cut: the TCP connection drops without DISCONNECT and the last will fires."""
        if self._link is not None:
            self._link.abort()
        await self._halt()

    def drop_connection(self) -> None:
        """Network blip: drop the TCP link (the last will fires); the device reconnects."""
        if self._link is not None:
            self._link.abort()

    def go_silent(self) -> None:
        """Stay connected (keepalive continues) but publish nothing and ignore commands."""
        self._silent = True

    def resume(self) -> None:
        self._silent = False

    async def _halt(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self._link = None
        self._online.clear()
        self._state = DeviceState.OFF

    # ------------------------------------------------------------ connection loop

    async def _run(self) -> None:
        try:
            await self._connect_loop()
        except Exception as exc:  # a bug here must show, not leave a silently dead device
            log.exception("simulated device %s crashed", self.device_id)
            self.last_error = f"crashed: {exc!r}"
            if self._link is not None:
                self._link.abort()
            self._state = DeviceState.OFF

    async def _connect_loop(self) -> None:
        attempt = 0
        while True:
            if self._switch_to is not None:
                await self._switch()
            if attempt:
                self._state = DeviceState.WAITING
                await asyncio.sleep(self._backoff(attempt))
            self._state = DeviceState.CONNECTING
            creds = self._fallback if (self._use_fallback and self._fallback) else self.credentials
            try:
                tls = creds.ssl_context()
            except ValueError as exc:  # retrying cannot fix a bad CA
                self.last_error = str(exc)
                self._state = DeviceState.OFF
                return
            link = MqttLink(
                self.device_id,
                None if creds.cert_pem else creds.token,
                will_topic=self._status_topic,
                will_payload=offline_will(),
                clean_session=self.profile.clean_session,
                on_message=self._on_message,
                on_acked=self._on_acked,
                on_lost=self._on_lost,
                on_tag_acked=self.acked_seqs.append if self.profile.track_acks else None,
            )
            try:
                async with self._gate if self._gate is not None else contextlib.nullcontext():
                    await link.connect(
                        *creds.endpoint(self._endpoint),
                        tls,
                        self.profile.keepalive_s,
                        self.profile.connect_timeout_s,
                    )
            except asyncio.CancelledError:
                link.abort()  # stopped or killed mid-handshake: leave no half-open session
                raise
            except LinkError as exc:
                self.last_error = str(exc)
                self._counts["connect_failures"] += 1
                self._endpoint += 1  # a cluster: try the next node
                if self._fallback is not None:  # a rotation: alternate new and previous
                    self._use_fallback = not self._use_fallback
                attempt += 1
                continue
            attempt = 1  # after a lost connection, wait a little before reconnecting
            self.last_error = None
            self._counts["connects"] += 1
            self._logged_in_with(creds)
            self._link = link
            link.subscribe(self._cmd_topic)  # before status: the broker sends queued commands on it
            if self.profile.ota:
                link.subscribe(self._ota_topic)
            self._publish_status(link)
            self._state = DeviceState.ONLINE
            self._online.set()
            ticker = asyncio.create_task(
                self._telemetry_loop(link), name=f"sim-tick-{self.device_id}"
            )
            try:
                await link.lost.wait()
            finally:
                ticker.cancel()
                self._online.clear()
            self._lost_link(creds)

    def _lost_link(self, creds: DeviceCredentials) -> None:
        self._counts["disconnects"] += 1
        self._link = None
        if creds.alternates:
            self._endpoint += 1  # the node may be gone: the next one first

    def _backoff(self, attempt: int) -> float:
        ceiling = min(
            self.profile.reconnect_max_s, self.profile.reconnect_min_s * 2 ** (attempt - 1)
        )
        return self._rng.uniform(ceiling / 2, ceiling)

    # ------------------------------------------------------------ publishing

    def _publish(
        self,
        link: MqttLink,
        topic: str,
        payload: bytes,
        kind: Kind,
        *,
        retain: bool = False,
        tag: int | None = None,
    ) -> bool:
        sent = link.publish(topic, payload, kind, retain=retain, tag=tag)
        if sent:
            self._counts[f"{_COUNTER_NAME.get(kind, kind.value)}_published"] += 1
        return sent

    def _on_acked(self, kind: Kind, _latency_s: float) -> None:
        self._counts[f"{_COUNTER_NAME.get(kind, kind.value)}_acked"] += 1
        self._window.set()

    def _publish_status(self, link: MqttLink) -> None:
        interval = self._fw.interval_s
        status = Status(
            online=True,
            fw=self.fw,
            boot=self._boot,
            sensors=self.profile.sensors,
            actuators=self.profile.actuators,
            interval_s=int(interval) if interval.is_integer() else interval,
            rssi=self.profile.rssi + self._rng.randint(-3, 3),
            ota=OtaSupport(1, self._ota.max_chunk, self._ota_last) if self.profile.ota else None,
        )
        self._publish(link, self._status_topic, encode(status), Kind.STATUS, retain=True)

    def _on_lost(self) -> None:
        self._online.clear()
        self._window.set()  # wake a burst waiting for PUBACKs that will not come

    def _ready(self, link: MqttLink | None) -> bool:
        return link is not None and link.connected and not self._silent and not self._switching

    def publish_telemetry(self) -> int | None:
        """Publish one telemetry message now; returns its `seq`, or None if none went out.

        Offline, silent or with the in-flight window full, the tick is skipped and
        takes no `seq` (the broker would read a gap as loss).
        """
        link = self._link
        if link is None or not self._ready(link) or link.inflight >= self.profile.max_inflight:
            self._counts["telemetry_skipped"] += 1
            return None
        return self._tick(link)

    def _tick(self, link: MqttLink) -> int | None:
        faults = self.faults
        self._ticks += 1
        if faults.malformed_every and self._ticks % faults.malformed_every == 0:
            n = self._ticks // faults.malformed_every - 1
            bad = MALFORMED_PAYLOADS[n % len(MALFORMED_PAYLOADS)]
            self._publish(link, self._telemetry_topic, bad, Kind.MALFORMED)
            return None
        seq = self._seq
        self._seq += 1
        if faults.telemetry_drop_rate and self._rng.random() < faults.telemetry_drop_rate:
            self._counts["telemetry_dropped"] += 1
            return None
        ts = int(self._clock() * 1000) if self.profile.send_ts else None
        msg = Telemetry(seq=seq, readings=self._fw.readings(), ts=ts, boot=self._boot)
        self._publish(link, self._telemetry_topic, encode(msg), Kind.TELEMETRY, tag=seq)
        return seq

    async def burst(self, ticks: int) -> int:
        """Run `ticks` telemetry ticks back to back, each waiting for room in the in-flight
        window (and for the link, if it is down); returns how many telemetry messages went
        out (faults may turn ticks into drops or malformed payloads). For benchmarks."""
        published = 0
        for _ in range(ticks):
            while True:
                link = self._link
                if link is None or not self._ready(link):
                    await asyncio.sleep(0.01)  # offline or silent: rare, so a short poll will do
                    continue
                if link.inflight < self.profile.max_inflight:
                    break
                self._window.clear()
                await self._window.wait()  # set by every PUBACK and by a lost link
            if self._tick(link) is not None:
                published += 1
        return published

    async def wait_acked(self, timeout_s: float = 10.0) -> bool:
        """Wait until every publish on the current connection has its PUBACK."""
        link = self._link
        return link is None or await link.wait_acked(timeout_s)

    async def _telemetry_loop(self, link: MqttLink) -> None:
        try:
            await self._tick_forever(link)
        except Exception:
            log.exception("telemetry of simulated device %s crashed; reconnecting", self.device_id)
            link.abort()

    async def _tick_forever(self, link: MqttLink) -> None:
        loop = asyncio.get_running_loop()
        # A random phase so that a fleet started at once does not publish in lockstep.
        due = loop.time() + self._rng.uniform(0, min(self._fw.interval_s, 1.0))
        while not link.lost.is_set():
            try:
                async with asyncio.timeout_at(due):
                    await self._reschedule.wait()
                self._reschedule.clear()
                due = loop.time() + self._fw.interval_s
                continue
            except TimeoutError:
                pass
            if not self._silent:
                self.publish_telemetry()
            due = max(due + self._fw.interval_s, loop.time())

    # ------------------------------------------------------------ commands

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._ota_topic and self.profile.ota:
            self._on_ota(payload)
            return
        if topic != self._cmd_topic:
            return
        self._counts["commands_received"] += 1
        if self._silent or (self.faults.drop_rate and self._rng.random() < self.faults.drop_rate):
            self._counts["commands_dropped"] += 1
            return
        try:
            cmd = decode_command(payload)
        except ProtocolError:
            self._counts["commands_malformed"] += 1
            return
        if cmd.action == "config" and "credential" in cmd.args:
            self._send_ack(self._on_credential(cmd))
            return
        outcome = self._fw.handle(cmd)
        if outcome.duplicate:
            self._counts["commands_duplicate"] += 1
        elif outcome.expired:
            self._counts["commands_expired"] += 1
        elif outcome.executed:
            self._counts["commands_executed"] += 1
        else:
            self._counts["commands_refused"] += 1
        if outcome.auto_off_at is not None:
            self._later(outcome.auto_off_at - self._clock() + 0.001, self._fw.expire_due)
        if outcome.interval_changed:
            self._reschedule.set()
            if self._link is not None:
                self._publish_status(self._link)  # the broker's silence bound follows interval_s
        delay = self.faults.ack_delay_s
        if delay > 0:
            self._later(delay, self._send_ack, outcome.ack)
        else:
            self._send_ack(outcome.ack)

    def _send_ack(self, ack: Ack) -> None:
        link = self._link
        if not self.faults.ack or self._silent or link is None:
            self._counts["acks_withheld"] += 1
            return
        if not self._publish(link, self._ack_topic, encode(ack), Kind.ACK):
            self._counts["acks_withheld"] += 1

    # ------------------------------------------------------------ updates over the air

    def _on_ota(self, payload: bytes) -> None:
        self._counts["ota_received"] += 1
        link = self._link
        for reply in self._ota.receive(payload):
            if link is not None:
                self._publish(link, self._ota_ack_topic, reply, Kind.OTA)
        if self._ota.staged is not None and link is not None:
            self._switch_to, self._ota.staged = self._ota.staged, None
            link.abort()  # the reboot: the connect loop switches, then comes back

    async def _switch(self) -> None:
        """Reboot into the staged version; one that crashes stays away `max_boots` boots and
        comes back on the previous version, saying so in its status."""
        staged, self._switch_to = self._switch_to, None
        assert staged is not None
        crash = self._rng.random() < self.faults.update_crash_rate
        self._state = DeviceState.WAITING
        if crash:
            await asyncio.sleep(self.profile.boot_s * staged.max_boots)
            self._boot += staged.max_boots + 1
            reason = f"not online after {plural(staged.max_boots, 'boot')}"
            self._ota_last = OtaLast(staged.t, staged.version, "rolled_back", reason)
            self._counts["updates_rolled_back"] += 1
            return
        await asyncio.sleep(self.profile.boot_s)
        self._boot += 1
        self.fw = staged.version
        self._ota = OtaReceiver(self.fw, self._ota.max_chunk)
        self._ota_last = OtaLast(staged.t, staged.version, "applied")
        self._counts["updates_applied"] += 1

    # ------------------------------------------------------------ credential rotation

    def _on_credential(self, cmd: Command) -> Ack:
        """A rotated credential: keep it (the current one becomes the fallback), ack, then
        switch the link over once every publish in flight is acknowledged."""
        done = self._credential_acks.get(cmd.id)
        if done is not None:
            return done  # a re-send: same answer, nothing switched twice
        try:
            delivery = credential_from_args(cmd.args)
        except ProtocolError as exc:
            return Ack(cmd.id, False, error=str(exc))
        assert delivery is not None
        old = self.credentials
        self._fallback = self._fallback or old
        self.credentials = DeviceCredentials(
            device_id=old.device_id,
            token=delivery.token or "",
            host=old.host,
            port=delivery.port or old.port,
            tls=old.tls,
            ca_pem=old.ca_pem,
            cert_pem=delivery.cert_pem,
            key_pem=delivery.key_pem,
        )
        self._use_fallback = False
        self.credential_id = delivery.id
        self._counts["credentials_received"] += 1
        self._switching = True  # no new telemetry until the link runs on the new credential
        ack = self._credential_acks[cmd.id] = Ack(cmd.id, True, {"credential": delivery.id})
        self._spawn_switch()
        return ack

    def _spawn_switch(self) -> None:
        async def switch() -> None:
            link = self._link
            if link is not None:
                await link.wait_acked(5.0)  # our ack and every telemetry in flight
                await link.close()  # clean: the connect loop logs in with the new credential

        task = asyncio.get_running_loop().create_task(switch(), name=f"sim-rotate-{self.device_id}")
        self._switch_task = task

    def _logged_in_with(self, creds: DeviceCredentials) -> None:
        if self._fallback is not None:
            if creds is self._fallback:
                self._counts["fallback_logins"] += 1
            else:
                self._counts["credential_switches"] += 1
                self._fallback = None
                self._use_fallback = False
        self._switching = False

    def _later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            fn(*args)

        handle = asyncio.get_running_loop().call_later(max(0.0, delay_s), fire)
        self._timers.add(handle)
