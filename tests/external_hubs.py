"""Hub processes (the real ``iothub run``) on an external broker, sharing one data dir; what tests
and benchmarks of the scale-out mode start."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from iothub.hub.registry import Registry, Scope

IOTHUB = [sys.executable, "-m", "iothub"]
START_S = 30.0
STOP_S = 30.0


@dataclass
class HubProcess:
    proc: asyncio.subprocess.Process
    http: str  # http://host:port

    async def stop(self) -> int:
        """SIGTERM, then wait for it to drain and exit; its exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_S):
            return await self.proc.wait()


def admin_token(data_dir: Path) -> str:
    """An admin token in the shared registry, made before any hub starts (so none prints its own)."""
    registry = Registry(data_dir / "registry.db")
    try:
        _, token = registry.create_token(Scope.ADMIN, "tests")
    finally:
        registry.close()
    return token


@asynccontextmanager
async def hub_process(
    data_dir: Path, broker_port: int, client_id: str, only: str | None = None, **env: str
) -> AsyncIterator[HubProcess]:
    """``iothub run`` against ``mqtt://127.0.0.1:{broker_port}`` on a free HTTP port; stopped with SIGTERM."""
    environ = {
        **os.environ,
        "IOTHUB_DATA_DIR": str(data_dir),
        "IOTHUB_BROKER__URL": f"mqtt://127.0.0.1:{broker_port}",
        "IOTHUB_BROKER__CLIENT_ID": client_id,
        "IOTHUB_BROKER__RECONNECT_MAX_S": "1",
        **env,
    }
    args = [*IOTHUB, "run", "--http-port", "0", "--grpc-port", "0", *(["--only", only] if only else [])]
    log = (data_dir.parent / f"{client_id}.log").open("ab")  # its log, kept with the test's files
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=log, env=environ, cwd=data_dir.parent
    )
    log.close()  # the process has its own copy
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(START_S):
            line = (await proc.stdout.readline()).decode()
        found = re.search(r" http=(\S+)", line)
        assert found, f"unexpected first line of iothub run: {line!r}"
        yield HubProcess(proc, found[1])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def stored_telemetry(db: Path, devices: Iterable[str]) -> list[tuple[str, int]]:
    """``(device, seq)`` of every telemetry event in the shared event log, once per event."""
    wanted = list(devices)
    conn = sqlite3.connect(db)
    try:
        marks = ",".join("?" * len(wanted))
        rows = conn.execute(
            f"SELECT device_id, data FROM events WHERE type = 'telemetry' AND device_id IN ({marks}) ORDER BY id",
            wanted,
        ).fetchall()
    finally:
        conn.close()
    return [(device, json.loads(data)["seq"]) for device, data in rows]
