"""Latency: `ping` every online device now and then, and keep round trips per device.

Pings are not commands of the outbox: they are not stored and make no events
(they would flood the log with nothing a server needs); their ids start with
`p-` so a late ping ack is recognised and never counted as an unknown command.
A device whose command acks already gave a round trip recently is not pinged.
Round trips go to the statistics service when there is one (`StatsService.record_rtt`,
per-device DDSketch over sliding windows), else to a `RttBook` of the same sketches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

from planty_broker.domain.stats.counters import latency_summary
from planty_broker.domain.stats.windowed import WindowedSketch
from planty_broker.protocol import Channel, Command, ErrorKind, Topics, encode
from planty_broker.services.bus import Bus, DeviceError
from planty_broker.services.commands.dispatch import Dispatcher
from planty_broker.tasks import spawn

log = logging.getLogger(__name__)

PING_PREFIX = "p-"


class RttSink(Protocol):
    """Where round trips and command outcomes are counted (`services.stats.StatsService`)."""

    def record_rtt(self, device_id: str, ms: float, now_ms: int | None = None) -> None: ...

    def command_sent(self, device_id: str, nbytes: int) -> None: ...

    def command_final(self, device_id: str, state: str) -> None: ...


class RttBook:
    """Round trips per device when no statistics service runs: the same windowed sketches."""

    def __init__(self) -> None:
        self.sketches: dict[str, WindowedSketch] = {}

    def record_rtt(self, device_id: str, ms: float, now_ms: int | None = None) -> None:
        sketch = self.sketches.get(device_id)
        if sketch is None:
            sketch = self.sketches[device_id] = WindowedSketch()
        sketch.add(ms, now_ms or 0)

    def command_sent(self, device_id: str, nbytes: int) -> None:
        return None

    def command_final(self, device_id: str, state: str) -> None:
        return None

    def forget(self, device_id: str) -> None:
        self.sketches.pop(device_id, None)

    def summary(self, device_id: str, window_ms: int, now_ms: int) -> dict[str, Any]:
        return latency_summary(self.sketches.get(device_id) or WindowedSketch(), window_ms, now_ms)


class Pinger:
    """Sends `ping` to online devices every `interval_s`; matches their acks."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        topics: Topics,
        bus: Bus,
        sink: RttSink,
        online: Callable[[], list[str]],
        clock: Callable[[], int],
        *,
        interval_s: float,
        ack_timeout_s: float,
    ) -> None:
        self._dispatcher = dispatcher
        self._topics = topics
        self._bus = bus
        self._sink = sink
        self._online = online
        self._clock = clock
        self._interval_ms = int(interval_s * 1000)
        self._timeout_ms = int(ack_timeout_s * 1000)
        self._next: dict[str, int] = {}  # device -> when to ping it next
        self._inflight: dict[str, tuple[str, int]] = {}  # ping id -> (device, sent at)
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.answered = 0
        self.lost = 0

    async def start(self) -> None:
        if self._interval_ms > 0:
            self._task = spawn("commands-ping", self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def measured(self, device_id: str, now_ms: int) -> None:
        """A command ack just gave a round trip: no ping needed for another interval."""
        if self._interval_ms > 0:
            self._next[device_id] = now_ms + self._interval_ms

    def forget(self, device_id: str) -> None:
        self._next.pop(device_id, None)

    def handle_ack(self, device_id: str, ping_id: str, at_ms: int) -> None:
        """An ack whose id starts with `p-`: a round trip if it is ours and in time."""
        found = self._inflight.pop(ping_id, None)
        if found is None or found[0] != device_id:
            return  # too late (already counted lost) or from before a restart
        self.answered += 1
        self._sink.record_rtt(device_id, float(at_ms - found[1]), at_ms)
        self._next[device_id] = at_ms + self._interval_ms

    async def _run(self) -> None:
        step_s = min(5.0, max(0.05, self._interval_ms / 10_000))
        while True:
            await asyncio.sleep(step_s)
            try:
                await self.tick(self._clock())
            except Exception:
                log.exception("commands: ping round failed")

    async def tick(self, now_ms: int) -> None:
        """Count lost pings, then ping the online devices that are due."""
        for pid, (device_id, sent_ms) in list(self._inflight.items()):
            if now_ms - sent_ms >= self._timeout_ms:
                del self._inflight[pid]
                self.lost += 1
                self._bus.publish(
                    DeviceError(
                        device_id,
                        ErrorKind.ACK_TIMEOUT.value,
                        f"no ack for ping {pid} within {self._timeout_ms / 1000:g} s",
                        now_ms,
                    )
                )
        link = self._dispatcher.link
        if link is None or not link.connected:
            return
        busy = {d for d, _ in self._inflight.values()}
        for device_id in self._online():
            due = self._next.get(device_id)
            if due is None:  # first sight: spread the fleet's pings over one interval
                self._next[device_id] = now_ms + random.randrange(self._interval_ms)  # noqa: S311
                continue
            if due > now_ms or device_id in busy:
                continue
            while not self._dispatcher.try_token():  # paced with the commands, and after them
                if len(self._dispatcher) or not link.connected:
                    return  # commands are waiting (or the link went): the rest next round
                await asyncio.sleep(self._dispatcher.token_wait_s())
                now_ms = self._clock()
            self._seq += 1
            pid = f"{PING_PREFIX}{now_ms:x}-{self._seq:x}"
            exp = now_ms + self._timeout_ms
            payload = encode(Command(pid, "ping", {}, exp))
            self._inflight[pid] = (device_id, self._clock())
            self._next[device_id] = now_ms + self._interval_ms
            self.sent += 1
            await link.publish(self._topics.device(device_id, Channel.CMD), payload)
