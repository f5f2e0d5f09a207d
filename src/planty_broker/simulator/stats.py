"""What a simulated device reports about itself: its state and its counters."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from planty_broker.simulator.provision import SimulatorError


class DeviceState(StrEnum):
    """Where the device is in its life."""

    OFF = "off"  # never started, stopped, or killed
    CONNECTING = "connecting"
    ONLINE = "online"
    WAITING = "waiting"  # backing off before the next connect attempt


class DeviceOfflineError(SimulatorError, TimeoutError):
    """The device did not come online in time; the message carries the last connect error."""


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """Counters over the device object's life; `*_acked` means PUBACK received from the server."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0  # connections lost without stop()/kill()
    status_published: int = 0
    status_acked: int = 0
    telemetry_published: int = 0
    telemetry_acked: int = 0
    telemetry_dropped: int = 0  # Faults.telemetry_drop_rate: seq taken, nothing sent
    telemetry_skipped: int = 0  # tick while offline or with the in-flight window full
    malformed_published: int = 0
    malformed_acked: int = 0
    acks_published: int = 0
    acks_acked: int = 0
    acks_withheld: int = 0  # Faults.ack=False, silent, or no link when the ack was due
    commands_received: int = 0
    commands_executed: int = 0
    commands_duplicate: int = 0
    commands_expired: int = 0
    commands_refused: int = 0  # acked ok=false for another reason than expiry
    commands_dropped: int = 0  # Faults.drop_rate or silent: never seen by the firmware
    commands_malformed: int = 0  # undecodable cmd payloads
    credentials_received: int = 0  # rotated credentials delivered in a `config` command
    credential_switches: int = 0  # logins with a newly received credential
    fallback_logins: int = 0  # logins with the previous credential (the new one was refused)
    ota_received: int = 0  # update offers and chunks received
    ota_acks_published: int = 0
    ota_acks_acked: int = 0
    updates_applied: int = 0  # switched to a new version, which came online
    updates_rolled_back: int = 0  # the new version crashed at boot (Faults.update_crash_rate)
