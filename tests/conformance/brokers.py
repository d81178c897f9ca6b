"""The brokers the MQTT rule tests run against: the hub's, a real Mosquitto, and plain amqtt 0.12.1.

Every broker is started by the test on a free loopback port and stopped after it. The hub runs with
anonymous access on (these rules are about MQTT, not the hub's ACL).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import pytest

from iothub.runner import serve
from tests.conftest import hub_settings

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PRESENT = Path(MOSQUITTO).exists()
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _opened(path: Path) -> IO[bytes]:
    return path.open("wb")


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@asynccontextmanager
async def hub_broker(tmp_path: Path, max_connections: int | None = None) -> AsyncIterator[int]:
    mqtt = {"allow_anonymous": True, "ws_port": None, "max_connections": max_connections}
    settings = hub_settings(tmp_path / "hub", mqtt=mqtt)
    async with serve(settings) as running:
        yield running.ports["mqtt"]


@asynccontextmanager
async def mosquitto(
    tmp_path: Path, max_connections: int | None = None, *, port: int | None = None, extra: str = ""
) -> AsyncIterator[int]:
    """A Mosquitto on ``port`` (a free one by default; given, to start it again where it was), with
    ``extra`` lines of configuration."""
    if not MOSQUITTO_PRESENT:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is missing: .ci/run installs Debian's mosquitto")
        pytest.skip("mosquitto is missing (apt-get install mosquitto)")
    port = port or _free_port()
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    config = tmp_path / "mosquitto.conf"
    limit = f"max_connections {max_connections}\n" if max_connections else ""
    config.write_text(f"listener {port} 127.0.0.1\n{limit}allow_anonymous true\npersistence false\n{extra}")
    log = tmp_path / "mosquitto.log"  # its stderr: it drops root, so it could not open a file here itself
    with _opened(log) as stderr:
        proc = await asyncio.create_subprocess_exec(
            MOSQUITTO, "-c", str(config), stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        # Ready when it says so: Mosquitto 2.0.11 counts even a closed probe connection against
        # max_connections for good, so readiness is not probed with a connection.
        for _ in range(200):  # bounded: 10 s
            if " running" in _read(log):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"mosquitto did not start: {_read(log)}")
        yield port
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            await proc.wait()


@asynccontextmanager
async def plain_amqtt(tmp_path: Path, max_connections: int | None = None) -> AsyncIterator[int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.conformance.plain_amqtt", str(max_connections or -1),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode().split()
        assert line[:1] == ["READY"], f"plain amqtt did not start: {line}"
        yield int(line[1])
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            await proc.wait()


BROKERS = {"hub": hub_broker, "mosquitto": mosquitto}
