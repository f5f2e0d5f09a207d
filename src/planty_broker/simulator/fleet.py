"""`Fleet`: many simulated devices run together, and `run_simulation` behind `planty simulate`.

Devices connect through one semaphore (`connect_concurrency`), so a 1,000-device
fleet does not start 1,000 TLS handshakes at once, on start and again when the
MQTT server comes back. A fleet is built either from credentials already known
(tests, benchmarks) or by provisioning each device through the gateway API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Self

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from planty_broker.protocol import Topics
from planty_broker.simulator.device import DeviceOfflineError, DeviceState, DeviceStats, SimDevice
from planty_broker.simulator.profile import DeviceCredentials, DeviceProfile
from planty_broker.simulator.provision import (
    OnConflict,
    SimulatorError,
    device_ids,
    load_tokens,
    provision_devices,
    save_tokens,
)


class FleetOfflineError(SimulatorError):
    """No device of the fleet could connect; the message carries the first device's reason."""


@dataclass(frozen=True, slots=True)
class FleetStats:
    """The fleet at one moment: how many devices, how many online, and summed counters."""

    devices: int
    online: int
    total: DeviceStats
    last_error: str | None = None  # why the last failed connection failed, if one did

    def line(self, *, rate_per_s: float | None = None) -> str:
        """One human line: the periodic summary of `planty simulate`."""
        t = self.total
        rate = f" ({rate_per_s:,.1f}/s)" if rate_per_s is not None else ""
        refused = t.commands_expired + t.commands_refused
        line = (
            f"{self.online}/{self.devices} online | telemetry {t.telemetry_published:,} sent{rate}"
            f" {t.telemetry_acked:,} acked | cmds {t.commands_received:,} "
            f"({t.commands_executed:,} run, {t.commands_duplicate:,} dup, {refused:,} refused)"
            f" | reconnects {t.disconnects:,}"
        )
        if t.updates_applied or t.updates_rolled_back or t.ota_received:
            line += (
                f" | updates {t.updates_applied:,} applied, {t.updates_rolled_back:,} rolled back"
            )
        if t.connect_failures:
            why = f" (last: {self.last_error})" if self.last_error else ""
            line += f" | connect failures {t.connect_failures:,}{why}"
        return line


def sum_stats(stats: Sequence[DeviceStats]) -> DeviceStats:
    """Counters summed over devices."""
    names = [f.name for f in fields(DeviceStats)]
    return DeviceStats(**{n: sum(getattr(s, n) for s in stats) for n in names})


class Fleet:
    """Simulated devices started, watched and stopped together: `async with Fleet(creds):`."""

    def __init__(
        self,
        credentials: Sequence[DeviceCredentials],
        profile: DeviceProfile | None = None,
        *,
        topics: Topics | None = None,
        connect_concurrency: int = 32,
        seed: int | None = None,
        wait_online_s: float | None = 60.0,
    ) -> None:
        self._gate = asyncio.Semaphore(connect_concurrency)
        self._wait_online_s = wait_online_s
        self.devices: tuple[SimDevice, ...] = tuple(
            SimDevice(
                c,
                profile,
                topics=topics,
                connect_gate=self._gate,
                seed=None if seed is None else seed + 7919 * i,
            )
            for i, c in enumerate(credentials)
        )
        self._by_id = {d.device_id: d for d in self.devices}
        self.replaced: tuple[str, ...] = ()  # set by `provision`: ids deleted and added again
        self.reused: tuple[str, ...] = ()  # set by `provision`: existing ids, kept tokens
        if len(self._by_id) != len(self.devices):
            raise ValueError("fleet credentials contain the same device id twice")

    @classmethod
    async def provision(
        cls,
        api_url: str,
        admin_token: str,
        count: int,
        *,
        prefix: str = "sim",
        profile: DeviceProfile | None = None,
        on_conflict: OnConflict = "replace",
        mqtt_host: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        progress: Progress | None = None,
        topics: Topics | None = None,
        connect_concurrency: int = 32,
        seed: int | None = None,
        wait_online_s: float | None = 60.0,
        tokens_file: Path | None = None,
    ) -> Fleet:
        """Register `prefix-0001`.. through the gateway API and build a fleet from the answers.

        With `tokens_file`, devices whose token it keeps are reused (not replaced), and
        the tokens of this fleet are written to it for the next run."""
        ids = device_ids(prefix, count)
        task = progress.add_task("provisioning", total=count) if progress is not None else None

        def advance(_device_id: str) -> None:
            if progress is not None and task is not None:
                progress.advance(task)

        replaced: list[str] = []
        reused: list[str] = []
        creds = await provision_devices(
            api_url,
            admin_token,
            ids,
            on_conflict=on_conflict,
            mqtt_host=mqtt_host,
            transport=transport,
            on_progress=advance,
            replaced=replaced,
            kept=load_tokens(tokens_file) if tokens_file is not None else None,
            reused=reused,
        )
        if tokens_file is not None:
            save_tokens(tokens_file, creds)
        fleet = cls(
            creds,
            profile,
            topics=topics,
            connect_concurrency=connect_concurrency,
            seed=seed,
            wait_online_s=wait_online_s,
        )
        fleet.replaced = tuple(replaced)
        fleet.reused = tuple(reused)
        return fleet

    def __len__(self) -> int:
        return len(self.devices)

    def __getitem__(self, device_id: str) -> SimDevice:
        return self._by_id[device_id]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, *, progress: Progress | None = None) -> int:
        """Start every device, wait (up to `wait_online_s`) for them; returns how many are online.

        Devices that did not make it keep retrying in the background; raises
        `FleetOfflineError` only when none came online.
        """
        for dev in self.devices:
            await dev.start()
        if self._wait_online_s is None:
            return self.online
        task = progress.add_task("connecting", total=len(self)) if progress is not None else None

        async def one(dev: SimDevice, timeout_s: float) -> None:
            try:
                await dev.wait_online(timeout_s)
            except DeviceOfflineError:
                return
            if progress is not None and task is not None:
                progress.advance(task)

        await asyncio.gather(*(one(d, self._wait_online_s) for d in self.devices))
        if self.devices and self.online == 0:
            first = self.devices[0]
            raise FleetOfflineError(
                f"no simulated device came online within {self._wait_online_s:g} s; "
                f"{first.device_id}: {first.last_error or first.state.value}"
            )
        return self.online

    async def stop(self) -> None:
        """Stop every device gracefully (retained offline status, clean DISCONNECT)."""
        await asyncio.gather(*(d.stop() for d in self.devices))

    @property
    def online(self) -> int:
        return sum(1 for d in self.devices if d.state == DeviceState.ONLINE)

    def offline(self) -> list[SimDevice]:
        return [d for d in self.devices if d.state != DeviceState.ONLINE]

    def stats(self) -> FleetStats:
        errors = [d.last_error for d in self.devices if d.last_error]
        return FleetStats(
            len(self),
            self.online,
            sum_stats([d.stats for d in self.devices]),
            errors[-1] if errors else None,
        )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


async def run_simulation(
    api_url: str,
    admin_token: str,
    devices: int = 10,
    interval_s: float = 5.0,
    prefix: str = "sim",
    *,
    duration_s: float | None = None,
    summary_every_s: float = 10.0,
    connect_concurrency: int = 32,
    wait_online_s: float = 60.0,
    on_conflict: OnConflict = "replace",
    mqtt_host: str | None = None,
    profile: DeviceProfile | None = None,
    progress: bool = True,
    console: Console | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    tokens_file: Path | None = None,
) -> FleetStats:
    """Provision `devices` devices through the API, run them until cancelled (or `duration_s`).

    With `tokens_file`, devices kept from an earlier run are reused (see `provision`).

    Prints a progress bar while provisioning and connecting, then one summary line
    every `summary_every_s`. On cancellation (Ctrl-C) the devices stop gracefully.
    Raises `SimulatorError` (one clear line) when provisioning fails or no device
    can connect. `profile` overrides the device profile; `interval_s` wins over it.
    """
    out = console or Console(stderr=True, markup=False, highlight=False)
    # gmqtt logs each lost connection with a stack trace; a fleet loses hundreds on purpose.
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    prof = replace(profile or DeviceProfile(), interval_s=interval_s)
    bar = _progress(out) if progress else None
    if bar is not None:
        bar.start()
    try:
        fleet = await Fleet.provision(
            api_url,
            admin_token,
            devices,
            prefix=prefix,
            profile=prof,
            on_conflict=on_conflict,
            mqtt_host=mqtt_host,
            transport=transport,
            progress=bar,
            connect_concurrency=connect_concurrency,
            wait_online_s=wait_online_s,
            tokens_file=tokens_file,
        )
    except BaseException:
        if bar is not None:
            bar.stop()
        raise
    try:
        try:
            online = await fleet.start(progress=bar)
        finally:
            if bar is not None:
                bar.stop()
        if fleet.reused:
            out.print(
                f"reused {len(fleet.reused)} simulated device(s) from an earlier run "
                f"({fleet.reused[0]}, …) with their tokens; --fresh replaces them"
            )
        if fleet.replaced:
            out.print(
                f"replaced {len(fleet.replaced)} device(s) that already existed "
                f"({fleet.replaced[0]}, …): their old tokens no longer work"
            )
        out.print(f"{online}/{len(fleet)} simulated devices online ({prefix}-…); Ctrl-C stops them")
        for dev in fleet.offline()[:3]:
            out.print(f"  {dev.device_id} not online yet: {dev.last_error or dev.state.value}")
        await _report_until(fleet, out, duration_s, summary_every_s)
    finally:
        await fleet.stop()
        final = fleet.stats()
        out.print(f"stopped: {final.line()}", highlight=False)
    return final


async def _report_until(
    fleet: Fleet, out: Console, duration_s: float | None, every_s: float
) -> None:
    """Print one summary line every `every_s` until `duration_s` (or forever)."""
    loop = asyncio.get_running_loop()
    started = last_t = loop.time()
    last_sent = fleet.stats().total.telemetry_published
    end = None if duration_s is None else started + duration_s
    while end is None or loop.time() < end:
        wake = loop.time() + every_s
        await asyncio.sleep(max(0.0, (wake if end is None else min(wake, end)) - loop.time()))
        now, stats = loop.time(), fleet.stats()
        rate = (stats.total.telemetry_published - last_sent) / max(now - last_t, 1e-9)
        last_t, last_sent = now, stats.total.telemetry_published
        out.print(f"[{time.strftime('%H:%M:%S')}] {stats.line(rate_per_s=rate)}", highlight=False)
