"""The package's shape: imports point one way (devices <- mqtt <- hub <- bridge <- runner and CLI; the
simulators use only devices) and no hand-written module grows past 400 lines."""

from __future__ import annotations

from pathlib import Path

from tests.imports import ROOT, imports, module_name

GENERATED = ROOT / "v1"  # from protos/ by scripts/protos
MAX_LINES = 400

# What each package may import of ours besides itself.
ALLOWED = {
    "devices": set(),
    "mqtt": set(),
    "hub": {"devices", "mqtt"},
    "bridge": {"hub", "devices", "mqtt", "v1"},
    "simulators": {"devices"},
}


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if GENERATED not in p.parents)


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
