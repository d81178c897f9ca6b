import random

import pytest

from iothub.devices import Telemetry
from iothub.simulators.profiles import PowerMeter, Thermostat, Tracker, make_profile

T = 1_790_000_000.0


@pytest.mark.parametrize("kind", ["thermostat", "power_meter", "tracker"])
def test_profiles_are_seeded_and_fit_the_contract(kind: str) -> None:
    a, b = make_profile(kind, random.Random(7)), make_profile(kind, random.Random(7))
    samples = [a.sample(T + i) for i in range(100)]
    assert samples == [b.sample(T + i) for i in range(100)]
    for metrics in samples:
        Telemetry(metrics=metrics)  # every sample is a valid telemetry payload


def test_thermostat_follows_the_day() -> None:
    t = Thermostat(random.Random(1))
    afternoon = sum(float(t.sample(T - T % 86_400 + 15 * 3600 + i)["temperature"]) for i in range(50)) / 50
    t = Thermostat(random.Random(1))
    night = sum(float(t.sample(T - T % 86_400 + 3 * 3600 + i)["temperature"]) for i in range(50)) / 50
    assert afternoon > night + 2
    assert t.command("set_setpoint", {"setpoint": 18}) == {"setpoint": 18.0}
    with pytest.raises(ValueError, match="between 5 and 35"):
        t.command("set_setpoint", {"setpoint": "hot"})
    assert t.command("dance", {}) is None


def test_power_meter_energy_only_grows() -> None:
    m = PowerMeter(random.Random(2))
    energies = [float(m.sample(T + i * 60)["energy"]) for i in range(100)]
    assert energies == sorted(energies)
    assert energies[-1] > energies[0]
    assert m.command("x", {}) is None


def test_tracker_moves_and_its_battery_stays_in_range() -> None:
    tr = Tracker(random.Random(3))
    first = tr.sample(T)
    for i in range(5000):
        last = tr.sample(T + i)
        assert 0 <= float(last["battery"]) <= 100
    assert (first["lat"], first["lon"]) != (last["lat"], last["lon"])
    assert tr.command("x", {}) is None


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="unknown profile 'toaster'"):
        make_profile("toaster", random.Random(0))
