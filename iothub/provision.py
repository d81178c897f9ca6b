"""Credentials for a simulated fleet, the way an operator would provision real devices.

``iothub simulate`` registers its devices in the local registry (type = signal profile, label
``simulated=true``) and keeps their secrets in ``{data_dir}/simulator-credentials.json`` (mode 0600),
so later runs reuse them; a device whose secret was rotated since (the kept secret no longer matches
the registry's hash) is given a new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from iothub.hub.credentials import verify_secret
from iothub.hub.registry import Registry

CREDENTIALS_FILE = "simulator-credentials.json"


def provision_fleet(registry: Registry, devices: dict[str, str], cache: Path) -> dict[str, str]:
    """``devices`` maps id -> type; returns id -> secret, registering or re-keying as needed."""
    known: dict[str, dict[str, object]] = json.loads(cache.read_text()) if cache.is_file() else {}
    credentials: dict[str, str] = {}
    for device_id, device_type in devices.items():
        record = registry.find_device(device_id)
        cached = known.get(device_id)
        if record is not None and cached is not None and _still_valid(cached, record.secret_hash):
            known[device_id] = {"secret": cached["secret"], "hash": record.secret_hash}
            credentials[device_id] = str(cached["secret"])
            continue
        if record is None:
            record, secret = registry.add_device(device_id, type=device_type, labels={"simulated": "true"})
        else:
            record, secret = registry.rotate_secret(device_id)
        if not record.enabled:
            registry.set_enabled(device_id, True)
        known[device_id] = {"secret": secret, "hash": record.secret_hash}
        credentials[device_id] = secret
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(known, out)
    tmp.replace(cache)
    return credentials


def _still_valid(cached: dict[str, object], secret_hash: str) -> bool:
    """Whether a kept secret is still the device's: its hash is the one kept with it, or (a hash the
    hub has upgraded since, a cache from an earlier version) the secret verifies against it. A
    timestamp would not do: a rotation within the same millisecond as the registration went unseen."""
    return cached.get("hash") == secret_hash or verify_secret(str(cached["secret"]), secret_hash)


def read_credentials(path: Path) -> dict[str, str]:
    """A credentials file: ``{"device-id": "secret", ...}`` (or this module's cache format)."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of device id -> secret")
    return {k: v if isinstance(v, str) else str(v["secret"]) for k, v in data.items()}
