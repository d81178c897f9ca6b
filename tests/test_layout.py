"""The package's shape: imports point one way (devices <- mqtt <- hub <- bridge <- runner and CLI; the
simulators use only devices; the client tools of ``watch`` sit beside the CLI) and no hand-written
module grows past 400 lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.imports import ROOT, imports, module_name

GENERATED = ROOT / "v1"  # from protos/ by scripts/protos
MAX_LINES = 400

# What each package may import of ours besides itself.
ALLOWED = {
    "devices": set(),
    "mqtt": set(),
    "hub": {"devices", "mqtt"},
    "bridge": {"hub", "devices", "v1"},
    "simulators": {"devices"},
    "watch": {"bridge", "hub", "devices", "v1"},
}


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if GENERATED not in p.parents)


def test_every_package_has_its_arrows() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {GENERATED.name}
    assert packages == set(ALLOWED)


def test_imports_point_one_way() -> None:
    wrong = []
    for path in _modules():
        parts = module_name(path).split(".")
        if len(parts) < 2 or parts[1] not in ALLOWED:
            continue
        own = parts[1]
        for name in imports(path):
            theirs = name.split(".")
            if theirs[0] != "iothub" or len(theirs) < 2 or theirs[1] == "__version__":
                continue
            if theirs[1] != own and theirs[1] not in ALLOWED[own]:
                wrong.append(f"{module_name(path)} imports {name}")
    assert not wrong
    assert "iothub.hub.store.sqlite_reads" in imports(ROOT / "hub" / "store" / "sqlite.py")  # the walk sees imports


def test_no_module_over_400_lines() -> None:
    long = {module_name(p): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these, each holds two ideas: {long}"


def test_a_sqlite_hub_does_not_load_the_influxdb_client() -> None:
    """influxdb-client and aiohttp take about 35 MiB and 0.15 s: only ``store.backend = influxdb`` loads them."""
    probe = "import sys, iothub.cli, iothub.runner; print(sorted({'influxdb_client', 'aiohttp'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout == "[]\n"
    probe = "import sys, iothub.hub.store.influx; print('influxdb_client' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout == "True\n"  # the probe sees the import when it happens
