import json
from pathlib import Path

import pytest

from iothub.hub.credentials import verify_secret
from iothub.hub.registry import Registry
from iothub.provision import provision_fleet, read_credentials


def test_a_fleet_is_registered_once_and_rekeyed_when_rotated(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    cache = tmp_path / "creds.json"
    first = provision_fleet(registry, {"s-0": "thermostat", "s-1": "tracker"}, cache)
    assert registry.device("s-1").type == "tracker"
    assert registry.device("s-0").labels == {"simulated": "true"}
    assert cache.stat().st_mode & 0o777 == 0o600
    assert provision_fleet(registry, {"s-0": "thermostat", "s-1": "tracker"}, cache) == first  # reused
    registry.rotate_secret("s-0")
    registry.set_enabled("s-0", False)
    again = provision_fleet(registry, {"s-0": "thermostat", "s-1": "tracker"}, cache)
    assert again["s-1"] == first["s-1"]
    assert again["s-0"] != first["s-0"]
    assert verify_secret(again["s-0"], registry.device("s-0").secret_hash)
    assert registry.device("s-0").enabled
    assert read_credentials(cache) == again
    # A cache from an earlier version (a rotation timestamp, no hash) is reused while its secrets verify.
    cache.write_text(json.dumps({d: {"secret": s, "rotated": 1} for d, s in again.items()}))
    assert provision_fleet(registry, {"s-0": "thermostat", "s-1": "tracker"}, cache) == again


def test_a_rotation_is_seen_however_soon_it_follows(tmp_path: Path) -> None:
    """Registration and rotation may fall in the same millisecond (a rotation timestamp missed it)."""
    registry = Registry(tmp_path / "registry.db")
    for n in range(200):
        cache = tmp_path / f"creds-{n}.json"
        device = f"quick-{n}"
        first = provision_fleet(registry, {device: "thermostat"}, cache)
        registry.rotate_secret(device)
        again = provision_fleet(registry, {device: "thermostat"}, cache)
        assert again[device] != first[device]
        assert verify_secret(again[device], registry.device(device).secret_hash)


def test_credentials_files(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"a": "secret-a"}')
    assert read_credentials(path) == {"a": "secret-a"}
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_credentials(path)
