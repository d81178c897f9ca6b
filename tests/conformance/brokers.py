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
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from iothub.runner import serve
from tests.conftest import hub_settings

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PRESENT = Path(MOSQUITTO).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_listening(port: int, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


@asynccontextmanager
async def hub_broker(tmp_path: Path) -> AsyncIterator[int]:
    settings = hub_settings(tmp_path / "hub", mqtt={"allow_anonymous": True, "ws_port": None})
    async with serve(settings) as running:
        yield running.ports["mqtt"]


@asynccontextmanager
async def mosquitto(tmp_path: Path) -> AsyncIterator[int]:
    if not MOSQUITTO_PRESENT:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is missing: .ci/run installs Debian's mosquitto")
        pytest.skip("mosquitto is missing (apt-get install mosquitto)")
    port = _free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = await asyncio.create_subprocess_exec(
        MOSQUITTO, "-c", str(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await _wait_listening(port)
        yield port
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            await proc.wait()


@asynccontextmanager
async def plain_amqtt(tmp_path: Path) -> AsyncIterator[int]:
    from amqtt.broker import Broker

    with warnings.catch_warnings():  # its own $SYS plugin warns about its own dependencies
        warnings.simplefilter("ignore", DeprecationWarning)
        broker = Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}})
        await broker.start()
    try:
        yield broker._servers["default"].instance.sockets[0].getsockname()[1]
    finally:
        await broker.shutdown()


BROKERS = {"hub": hub_broker, "mosquitto": mosquitto}
