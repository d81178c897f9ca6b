"""Signal profiles: what a simulated device measures. Pure and seeded, so runs are reproducible.

Each profile's ``sample(t)`` takes seconds since the epoch (time only moves forward) and returns the
metrics of one telemetry message.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

Metrics = dict[str, float | int | bool | str]
DAY = 86_400.0


def _daily(t: float, peak_hour: float) -> float:
    """-1..1 over the day, 1 at ``peak_hour`` local (UTC here)."""
    return math.cos(2 * math.pi * ((t % DAY) / DAY - peak_hour / 24))


class Profile(Protocol):
    kind: str

    def sample(self, t: float) -> Metrics: ...

    def command(self, name: str, args: dict[str, object]) -> dict[str, object] | None:
        """Apply a profile-specific command; ``None`` when the profile does not know it."""
        ...


class Thermostat:
    """Room temperature and humidity with a daily cycle, sensor noise and a heating setpoint."""

    kind = "thermostat"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.base = rng.uniform(19.0, 23.0)
        self.setpoint = round(self.base, 1)
        self.drift = 0.0

    def sample(self, t: float) -> Metrics:
        self.drift = max(-1.5, min(1.5, self.drift + self.rng.gauss(0, 0.05)))
        temperature = self.base + 2.5 * _daily(t, 15) + self.drift + self.rng.gauss(0, 0.1)
        humidity = 45 - 8 * _daily(t, 15) + self.rng.gauss(0, 0.8)
        return {
            "temperature": round(temperature, 2),
            "humidity": round(min(100.0, max(0.0, humidity)), 1),
            "setpoint": self.setpoint,
            "heating": temperature < self.setpoint - 0.5,
        }

    def command(self, name: str, args: dict[str, object]) -> dict[str, object] | None:
        if name != "set_setpoint":
            return None
        value = args.get("setpoint")
        if not isinstance(value, int | float) or isinstance(value, bool) or not 5 <= value <= 35:
            raise ValueError("args.setpoint must be a number between 5 and 35")
        self.setpoint = float(value)
        return {"setpoint": self.setpoint}


class PowerMeter:
    """Household power: base load, a daily curve, appliances switching on and off; energy integrates."""

    kind = "power_meter"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.base = rng.uniform(150, 400)
        self.appliance = 0.0
        self.energy_kwh = round(rng.uniform(1000, 20000), 3)
        self.last_t: float | None = None

    def sample(self, t: float) -> Metrics:
        if self.rng.random() < 0.05:
            self.appliance = 0.0 if self.appliance else self.rng.choice([800.0, 1200.0, 2000.0, 2400.0])
        power = max(0.0, self.base * (1.3 + 0.5 * _daily(t, 19)) + self.appliance + self.rng.gauss(0, 15))
        if self.last_t is not None:
            self.energy_kwh += power * max(0.0, t - self.last_t) / 3_600_000
        self.last_t = t
        return {
            "power": round(power, 1),
            "energy": round(self.energy_kwh, 4),
            "voltage": round(230 + self.rng.gauss(0, 1.5), 1),
        }

    def command(self, name: str, args: dict[str, object]) -> dict[str, object] | None:
        return None


class Tracker:
    """A vehicle tracker: a random walk with momentum, speed, and a battery that drains and charges."""

    kind = "tracker"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lat = rng.uniform(47.0, 55.0)
        self.lon = rng.uniform(5.0, 15.0)
        self.heading = rng.uniform(0, 2 * math.pi)
        self.battery = rng.uniform(40, 100)
        self.charging = False

    def sample(self, t: float) -> Metrics:
        self.heading += self.rng.gauss(0, 0.2)
        speed = max(0.0, 40 + 25 * _daily(t, 12) + self.rng.gauss(0, 8))  # km/h
        step = speed / 3600 / 111  # degrees per second, roughly
        self.lat += step * math.cos(self.heading)
        self.lon += step * math.sin(self.heading)
        if self.battery < 15:
            self.charging = True
        elif self.battery > 95:
            self.charging = False
        self.battery = min(100.0, max(0.0, self.battery + (0.5 if self.charging else -0.02)))
        return {
            "lat": round(self.lat, 6),
            "lon": round(self.lon, 6),
            "speed": round(speed, 1),
            "battery": round(self.battery, 1),
            "charging": self.charging,
        }

    def command(self, name: str, args: dict[str, object]) -> dict[str, object] | None:
        return None


PROFILES: dict[str, type[Thermostat] | type[PowerMeter] | type[Tracker]] = {
    "thermostat": Thermostat,
    "power_meter": PowerMeter,
    "tracker": Tracker,
}


def make_profile(kind: str, rng: random.Random) -> Profile:
    try:
        return PROFILES[kind](rng)
    except KeyError:
        raise ValueError(f"unknown profile {kind!r}; known: {', '.join(PROFILES)}") from None
