"""A virtual ESP32 fleet speaking PROTOCOL.md, for `planty simulate`, tests and benchmarks."""

from planty_broker.simulator.device import SimDevice
from planty_broker.simulator.firmware import ActuatorState, Execution, Source
from planty_broker.simulator.fleet import Fleet, FleetOfflineError, FleetStats, run_simulation
from planty_broker.simulator.profile import DeviceCredentials, DeviceProfile, Faults
from planty_broker.simulator.provision import (
    ProvisioningError,
    SimulatorError,
    device_ids,
    provision_devices,
)
from planty_broker.simulator.stats import DeviceOfflineError, DeviceState, DeviceStats

__all__ = [
    "ActuatorState",
    "DeviceCredentials",
    "DeviceOfflineError",
    "DeviceProfile",
    "DeviceState",
    "DeviceStats",
    "Execution",
    "Faults",
    "Fleet",
    "FleetOfflineError",
    "FleetStats",
    "ProvisioningError",
    "SimDevice",
    "SimulatorError",
    "Source",
    "device_ids",
    "provision_devices",
    "run_simulation",
]
