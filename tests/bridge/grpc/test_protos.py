"""The committed iothub/v1 code is what scripts/protos generates from protos/iothub/v1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GENERATED = ROOT / "iothub" / "v1"


def test_regenerating_gives_the_committed_files(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(
        [str(ROOT / "scripts" / "protos"), str(tmp_path)], check=True, env=env, capture_output=True, timeout=60
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "iothub" / "v1").iterdir()}
    committed = {p.name: p.read_bytes() for p in GENERATED.iterdir() if "_pb2" in p.name}
    assert sorted(fresh) == sorted(committed), "regenerate with scripts/protos and commit iothub/v1"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"iothub/v1 differs from protos/ in {stale}: regenerate with scripts/protos and commit"


def test_every_proto_is_generated() -> None:
    protos = {p.stem for p in (ROOT / "protos" / "iothub" / "v1").glob("*.proto")}
    assert protos == {p.name.removesuffix("_pb2.py") for p in GENERATED.glob("*_pb2.py")}
