"""A virtual ESP32 fleet speaking PROTOCOL.md, for `planty simulate`, tests and benchmarks."""

from planty_broker.simulator.claim import (
    ClaimCredentials,
    ClaimError,
    FactoryDevice,
    FactoryIdentity,
    claim,
)
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
    "ClaimCredentials",
    "ClaimError",
    "DeviceCredentials",
    "DeviceOfflineError",
    "DeviceProfile",
    "DeviceState",
    "DeviceStats",
    "Execution",
    "FactoryDevice",
    "FactoryIdentity",
    "Faults",
    "Fleet",
    "FleetOfflineError",
    "FleetStats",
    "ProvisioningError",
    "SimDevice",
    "SimulatorError",
    "Source",
    "claim",
    "device_ids",
    "provision_devices",
    "run_simulation",
]
