"""The real ``iothub`` client verbs in a subprocess, pointed at a hub the test runs; every wait bounded."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from iothub.testing import HubUnderTest
from tests.conftest import WAIT_S

IOTHUB = [sys.executable, "-m", "iothub"]


def client_env(hub: HubUnderTest | None, **settings: str) -> dict[str, str]:
    """The environment without the caller's ``IOTHUB_*``, with ``IOTHUB_CLIENT__*`` pointing at ``hub``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTHUB_")}
    if hub is not None:
        env |= {"IOTHUB_CLIENT__URL": hub.url, "IOTHUB_CLIENT__TOKEN": hub.token}
        env["IOTHUB_CLIENT__MQTT_URL"] = f"mqtt://127.0.0.1:{hub.mqtt_port}"
        env["IOTHUB_CLIENT__GRPC_ADDRESS"] = hub.grpc_address
    env |= {f"IOTHUB_CLIENT__{k.upper()}": v for k, v in settings.items()}
    return env


@dataclass
class Finished:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


class Cli:
    """One ``iothub`` process: :meth:`ready` waits for its first stderr line (``watching ...`` or
    ``listening on ...``), :meth:`finished` for its exit."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.first_err = ""

    async def ready(self, within: float = WAIT_S) -> str:
        assert self.process.stderr is not None
        async with asyncio.timeout(within):
            self.first_err = (await self.process.stderr.readline()).decode()
        return self.first_err

    async def finished(self, within: float = WAIT_S) -> Finished:
        try:
            async with asyncio.timeout(within):
                out, err = await self.process.communicate()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise
        assert self.process.returncode is not None
        return Finished(self.process.returncode, out.decode(), self.first_err + err.decode())


async def start(cwd: Path, env: dict[str, str], *args: str) -> Cli:
    process = await asyncio.create_subprocess_exec(
        *IOTHUB, *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    return Cli(process)


async def run(cwd: Path, env: dict[str, str], *args: str, within: float = WAIT_S) -> Finished:
    return await (await start(cwd, env, *args)).finished(within)
