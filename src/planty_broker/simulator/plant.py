"""A small plant-in-a-pot model that gives the simulated sensors believable numbers.

Soil dries slowly and rises while the pump runs; temperature follows a day curve
with noise; light follows day and night; the lamp adds light (and a little heat),
a fan cools. Pure and deterministic for a given seed and clock, so unit tests can
check it exactly.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

# Rates in simulated time (seconds of plant time; `time_scale` maps wall time to it).
DRY_PER_S = 0.03 / 3600  # a pot loses about 3 points of moisture an hour
PUMP_PER_S = 0.01  # a running pump at full flow adds 1 point a second
SUN_LUX = 900.0  # a bright window sill at noon
LAMP_LUX = 3000.0  # a grow lamp at full power, at plant height
LAMP_HEAT_C = 0.8
FAN_COOL_C = 1.5


def _hour_of_day(sim_now: float) -> float:
    local = time.localtime(sim_now)
    return local.tm_hour + local.tm_min / 60 + (sim_now % 60) / 3600


@dataclass(slots=True)
class PlantModel:
    """State of the pot; call `advance()` before reading or changing an actuator."""

    rng: random.Random = field(default_factory=random.Random)
    soil_moisture: float = 0.45
    time_scale: float = 1.0
    # What makes one pot unlike the next (`varied`): how fast it dries (pot size, plant),
    # where it stands (warmer or cooler, sunnier or shadier), and its sensor's noise.
    dry_factor: float = 1.0
    temp_offset_c: float = 0.0
    light_factor: float = 1.0
    soil_noise: float = 0.0
    _origin: float | None = None
    _last: float | None = None
    _sim_last: float = 0.0

    @classmethod
    def varied(cls, rng: random.Random, time_scale: float = 1.0) -> PlantModel:
        """A pot of its own, drawn from `rng`: starting moisture 0.25..0.70, drying 0.6..1.6x
        the mean rate, -2..+2 deg C from the room, 0.3..1.2x the window's light."""
        return cls(
            rng=rng,
            soil_moisture=round(rng.uniform(0.25, 0.70), 3),
            time_scale=time_scale,
            dry_factor=rng.uniform(0.6, 1.6),
            temp_offset_c=rng.uniform(-2.0, 2.0),
            light_factor=rng.uniform(0.3, 1.2),
        )

    def sim_time(self, now: float) -> float:
        """Plant time for a wall-clock time: real time, sped up by `time_scale` since start."""
        if self._origin is None:
            self._origin = now
        return self._origin + (now - self._origin) * self.time_scale

    def advance(self, now: float, levels: Mapping[str, float]) -> None:
        """Integrate from the last call to `now` with the actuator levels (0..1) held so far."""
        sim_now = self.sim_time(now)
        if self._last is None:
            self._last, self._sim_last = now, sim_now
            return
        dt = max(0.0, sim_now - self._sim_last)
        self._last, self._sim_last = now, sim_now
        pump = levels.get("pump", 0.0)
        # Water soaks in with diminishing returns as the soil nears saturation.
        gain = PUMP_PER_S * pump * dt * (1.0 - self.soil_moisture)
        dry = DRY_PER_S * self.dry_factor * dt
        self.soil_moisture = min(1.0, max(0.0, self.soil_moisture - dry + gain))

    def readings(
        self, now: float, levels: Mapping[str, float], sensors: tuple[str, ...]
    ) -> dict[str, float]:
        """The sensor values at `now` for the named sensors (unknown names read 0)."""
        self.advance(now, levels)
        hour = _hour_of_day(self.sim_time(now))
        lamp = levels.get("lamp", 0.0)
        fan = levels.get("fan", 0.0)
        values: dict[str, float] = {}
        for name in sensors:
            if name == "temperature":
                day = 4.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)
                noise = self.rng.gauss(0.0, 0.15)
                base = 21.0 + self.temp_offset_c + day
                values[name] = round(base + LAMP_HEAT_C * lamp - FAN_COOL_C * fan + noise, 2)
            elif name == "soil_moisture":
                noise = self.rng.gauss(0.0, self.soil_noise) if self.soil_noise else 0.0
                values[name] = round(min(1.0, max(0.0, self.soil_moisture + noise)), 4)
            elif name == "light":
                sun = (
                    max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0)) if 6.0 < hour < 18.0 else 0.0
                )
                noise = self.rng.uniform(0.97, 1.03)
                values[name] = round(
                    (SUN_LUX * self.light_factor * sun + LAMP_LUX * lamp) * noise, 1
                )
            elif name == "humidity":
                values[name] = round(
                    min(1.0, 0.45 + 0.2 * self.soil_moisture + self.rng.gauss(0, 0.01)), 3
                )
            elif name == "battery":
                values[name] = round(3.9 + self.rng.gauss(0, 0.01), 3)
            else:
                values[name] = 0.0
        return values
