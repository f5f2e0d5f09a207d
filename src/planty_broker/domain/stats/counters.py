"""Per-device and fleet counters, vitals and latency: cheap to update, plain dicts to read.

`DeviceStats` sits on the ingest hot path. Its counters are plain int slots, so
counting a message allocates no dict. The error and command-state counters are
slots too, named from `ErrorKind` and `COMMAND_FINAL_STATES`. Counters are cumulative since
`since_ms`; latency is kept per window (see `WindowedSketch`); availability
comes from stored presence (see `availability.py`). All times are unix ms
passed in by the caller: nothing here reads a clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from enum import StrEnum
from typing import Any

from planty_broker.domain.stats.sketch import key_of
from planty_broker.domain.stats.windowed import (
    DAY_MS,
    DEFAULT_LAYOUT,
    HOUR_MS,
    MINUTE_MS,
    WEEK_MS,
    WindowedSketch,
    WindowLayout,
)
from planty_broker.protocol import ErrorKind

DEFAULT_QUANTILES = (0.5, 0.95, 0.99)
COMMAND_FINAL_STATES = ("acked", "failed", "expired", "cancelled", "superseded")


class ReconnectCause(StrEnum):
    """Why a device that had been away came back (what ended its previous session)."""

    REBOOT = "reboot"  # its status came back with a new `boot` number
    LAST_WILL = "last_will"  # the connection dropped (last will or goodbye), no reboot
    SILENCE = "silence"  # it went quiet past the silence bound, then spoke again
    GATEWAY_RESTART = "gateway_restart"  # the broker itself was down
    OTHER = "other"
    SHUTDOWN = "shutdown"  # it had shut down cleanly (said goodbye), no reboot seen


_ERROR_SLOTS = {kind: f"err_{kind.value}" for kind in ErrorKind}
_COMMAND_SLOTS = {state: f"cmd_{state}" for state in COMMAND_FINAL_STATES}
_RECONNECT_SLOTS = {cause: f"rc_{cause.value}" for cause in ReconnectCause}
_COUNTER_SLOTS = (
    "msgs_in",
    "msgs_out",
    "bytes_in",
    "bytes_out",
    "readings",
    "reading_values",
    "cmd_sent",
    *_COMMAND_SLOTS.values(),
    *_ERROR_SLOTS.values(),
    *_RECONNECT_SLOTS.values(),
)


class DeviceStats:
    """Counters, vitals and latency of one device; increment methods are O(1), allocation-free."""

    __slots__ = (
        *_COUNTER_SLOTS,
        "_fleet_latency",
        "boot",
        "fw",
        "heap",
        "last_error_ms",
        "last_message_ms",
        "latency",
        "rssi",
        "since_ms",
        "uptime_s",
        "vitals_ms",
    )

    msgs_in: int
    msgs_out: int
    bytes_in: int
    bytes_out: int
    readings: int
    reading_values: int
    cmd_sent: int

    def __init__(
        self,
        since_ms: int,
        layout: WindowLayout = DEFAULT_LAYOUT,
        *,
        fleet_latency: WindowedSketch | None = None,
    ) -> None:
        for name in _COUNTER_SLOTS:
            setattr(self, name, 0)
        self.since_ms = since_ms
        self.last_message_ms: int | None = None
        self.last_error_ms: int | None = None
        self.rssi: int | None = None
        self.heap: int | None = None
        self.uptime_s: int | None = None
        self.fw: str | None = None
        self.boot: int | None = None
        self.vitals_ms: int | None = None
        self.latency = WindowedSketch(layout)
        self._fleet_latency = fleet_latency

    # ------------------------------------------------------------ hot path

    def message_in(self, nbytes: int, now_ms: int) -> None:
        """A message arrived from the device (any channel, valid or not)."""
        self.msgs_in += 1
        self.bytes_in += nbytes
        self.last_message_ms = now_ms

    def message_out(self, nbytes: int) -> None:
        """A message was published to the device."""
        self.msgs_out += 1
        self.bytes_out += nbytes

    def reading(self, values: int) -> None:
        """A telemetry message was accepted with `values` readings in it."""
        self.readings += 1
        self.reading_values += values

    def error(self, kind: ErrorKind, now_ms: int) -> None:
        """A message from (or an exchange with) the device was refused for `kind`."""
        name = _ERROR_SLOTS[kind]
        setattr(self, name, getattr(self, name) + 1)
        self.last_error_ms = now_ms

    def command_sent(self) -> None:
        """A command was published to the device (each attempt counts)."""
        self.cmd_sent += 1

    def command_final(self, state: str) -> None:
        """A command reached a final state: one of COMMAND_FINAL_STATES."""
        name = _COMMAND_SLOTS.get(state)
        if name is None:
            raise ValueError(f"{state!r} is not a final command state {COMMAND_FINAL_STATES}")
        setattr(self, name, getattr(self, name) + 1)

    def reconnect(self, cause: ReconnectCause) -> None:
        """The device came back after being away, for `cause`."""
        name = _RECONNECT_SLOTS[cause]
        setattr(self, name, getattr(self, name) + 1)

    def round_trip(self, value_ms: float, now_ms: int) -> None:
        """A ping or command round trip took `value_ms` (also fed to the fleet sketch)."""
        if value_ms < 0.0:  # noqa: PLR1730 (an if is ~100 ns cheaper than max() per sample)
            value_ms = 0.0
        key = key_of(self.latency.mapping, value_ms)
        self.latency.add_keyed(key, value_ms, now_ms)
        if self._fleet_latency is not None:
            self._fleet_latency.add_keyed(key, value_ms, now_ms)

    def vitals(
        self,
        now_ms: int,
        *,
        rssi: int | None = None,
        heap: int | None = None,
        uptime_s: int | None = None,
        fw: str | None = None,
        boot: int | None = None,
    ) -> None:
        """What a status payload reported; fields it did not carry keep their last value."""
        if rssi is not None:
            self.rssi = rssi
        if heap is not None:
            self.heap = heap
        if uptime_s is not None:
            self.uptime_s = uptime_s
        if fw is not None:
            self.fw = fw
        if boot is not None:
            self.boot = boot
        self.vitals_ms = now_ms

    # ------------------------------------------------------------ reading

    def error_count(self, kind: ErrorKind) -> int:
        count: int = getattr(self, _ERROR_SLOTS[kind])
        return count

    def errors(self) -> dict[str, int]:
        return {kind.value: getattr(self, name) for kind, name in _ERROR_SLOTS.items()}

    def commands(self) -> dict[str, int]:
        by_state = {state: getattr(self, name) for state, name in _COMMAND_SLOTS.items()}
        return {"sent": self.cmd_sent, **by_state}

    def reconnects(self) -> dict[str, int]:
        return {cause.value: getattr(self, name) for cause, name in _RECONNECT_SLOTS.items()}

    def counters(self) -> dict[str, int]:
        """Every counter by slot name: to persist across restarts (see `restore_counters`)."""
        return {name: getattr(self, name) for name in _COUNTER_SLOTS}

    def restore_counters(self, saved: dict[str, int]) -> None:
        """Add counters saved by `counters()`; unknown names (older versions) are ignored."""
        for name in _COUNTER_SLOTS:
            value = saved.get(name)
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)

    def snapshot(
        self,
        now_ms: int,
        window_ms: int = HOUR_MS,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> dict[str, Any]:
        """Everything as plain values for the API; latency over `window_ms`, counters cumulative."""
        errors = self.errors()
        reconnects = self.reconnects()
        last = self.last_message_ms
        return {
            "since_ms": self.since_ms,
            "messages_in": self.msgs_in,
            "messages_out": self.msgs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "readings": self.readings,
            "reading_values": self.reading_values,
            "commands": self.commands(),
            "errors": errors,
            "errors_total": sum(errors.values()),
            "last_error_ms": self.last_error_ms,
            "reconnects": reconnects,
            "reconnects_total": sum(reconnects.values()),
            "last_message_ms": last,
            "since_last_message_ms": None if last is None else max(now_ms - last, 0),
            "vitals": {
                "rssi": self.rssi,
                "heap": self.heap,
                "uptime_s": self.uptime_s,
                "fw": self.fw,
                "boot": self.boot,
                "at_ms": self.vitals_ms,
            },
            "latency": latency_summary(self.latency, window_ms, now_ms, quantiles),
        }


def latency_summary(
    sketch: WindowedSketch,
    window_ms: int,
    now_ms: int,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> dict[str, Any]:
    """Count, min, max, mean and quantiles (keys p50, p95, p99, ...) in ms over a window."""
    merged = sketch.window(window_ms, now_ms)
    summary: dict[str, Any] = {
        "window_ms": window_ms,
        "count": merged.count,
        "min_ms": merged.min,
        "max_ms": merged.max,
        "mean_ms": merged.mean,
    }
    for q, value in zip(quantiles, merged.quantiles(quantiles), strict=True):
        summary[f"p{q * 100:g}_ms"] = value
    return summary


class FleetStats:
    """The `DeviceStats` of every device, a fleet-wide latency sketch, and totals."""

    __slots__ = ("_devices", "_layout", "latency", "since_ms")

    def __init__(self, since_ms: int, layout: WindowLayout = DEFAULT_LAYOUT) -> None:
        self.since_ms = since_ms
        self._layout = layout
        self._devices: dict[str, DeviceStats] = {}
        self.latency = WindowedSketch(layout)

    def device(self, device_id: str, now_ms: int) -> DeviceStats:
        """The stats of a device, created (counting from `now_ms`) on first use."""
        stats = self._devices.get(device_id)
        if stats is None:
            stats = DeviceStats(now_ms, self._layout, fleet_latency=self.latency)
            self._devices[device_id] = stats
        return stats

    def get(self, device_id: str) -> DeviceStats | None:
        return self._devices.get(device_id)

    def remove(self, device_id: str) -> bool:
        """Forget a removed device: its counters leave the totals (its latency samples stay)."""
        return self._devices.pop(device_id, None) is not None

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def __iter__(self) -> Iterator[str]:
        return iter(self._devices)

    def items(self) -> Iterable[tuple[str, DeviceStats]]:
        return self._devices.items()

    def totals(self) -> dict[str, int]:
        """Every counter summed over the devices, by slot name (see `DeviceStats.counters`)."""
        return sum_counters(self._devices.values())

    def snapshot(
        self,
        now_ms: int,
        window_ms: int = HOUR_MS,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> dict[str, Any]:
        """Fleet figures for the API: totals, devices heard within the window, fleet latency."""
        totals = self.totals()
        errors = {kind.value: totals[name] for kind, name in _ERROR_SLOTS.items()}
        reconnects = {cause.value: totals[name] for cause, name in _RECONNECT_SLOTS.items()}
        since = now_ms - window_ms
        heard = sum(
            1
            for s in self._devices.values()
            if s.last_message_ms is not None and s.last_message_ms > since
        )
        commands = {state: totals[name] for state, name in _COMMAND_SLOTS.items()}
        return {
            "since_ms": self.since_ms,
            "devices": len(self._devices),
            "devices_heard": heard,
            "messages_in": totals["msgs_in"],
            "messages_out": totals["msgs_out"],
            "bytes_in": totals["bytes_in"],
            "bytes_out": totals["bytes_out"],
            "readings": totals["readings"],
            "reading_values": totals["reading_values"],
            "commands": {"sent": totals["cmd_sent"], **commands},
            "errors": errors,
            "errors_total": sum(errors.values()),
            "reconnects": reconnects,
            "reconnects_total": sum(reconnects.values()),
            "latency": latency_summary(self.latency, window_ms, now_ms, quantiles),
        }


def sum_counters(devices: Iterable[DeviceStats]) -> dict[str, int]:
    """Counters of many devices added up, by slot name."""
    totals = dict.fromkeys(_COUNTER_SLOTS, 0)
    for stats in devices:
        for name in _COUNTER_SLOTS:
            totals[name] += getattr(stats, name)
    return totals


# ---------------------------------------------------------------- windows

WINDOWS_MS = {"5m": 5 * MINUTE_MS, "1h": HOUR_MS, "1d": DAY_MS, "1w": WEEK_MS}
_WINDOW_RE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNIT_MS = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": WEEK_MS}


def parse_window(text: str, layout: WindowLayout = DEFAULT_LAYOUT) -> int:
    """A window like `15m`, `1h`, `24h`, `7d`, `1w` in ms; ValueError with a one-line hint."""
    match = _WINDOW_RE.match(text)
    window_ms = int(match.group(1)) * _UNIT_MS[match.group(2)] if match else 0
    if window_ms <= 0:
        raise ValueError(f"window {text!r} is not like 15m, 1h, 24h, 7d or 1w")
    if window_ms > layout.max_window_ms:
        raise ValueError(
            f"window {text!r} is longer than the {layout.max_window_ms // HOUR_MS} h kept"
        )
    return window_ms
