"""VictoriaMetrics (Debian package ``victoria-metrics``) as a real server of InfluxDB's
``/api/v2/write``: started on a free loopback port with a temporary data dir, stopped after use.
Points are read back through its export API."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conformance.brokers import _free_port

VICTORIA = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
VICTORIA_PRESENT = Path(VICTORIA).exists()


@asynccontextmanager
async def victoria_metrics(tmp_path: Path) -> AsyncIterator[str]:
    """Its base URL, ``http://127.0.0.1:{port}``, once it answers ``/health``."""
    if not VICTORIA_PRESENT:
        if os.environ.get("CI") == "true":
            pytest.fail("victoria-metrics is missing: .ci/run installs Debian's victoria-metrics")
        pytest.skip("victoria-metrics is missing (apt-get install victoria-metrics)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = [VICTORIA, f"-storageDataPath={tmp_path / 'vm-data'}", f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=100y", "-loggerLevel=ERROR"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(timeout=2) as client, asyncio.timeout(20):
            while True:  # bounded by the timeout
                try:
                    if (await client.get(f"{url}/health")).text == "OK":
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)  # waiting for another process to listen
        yield url
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            await proc.wait()


async def exported(url: str, match: str = '{__name__=~".+"}') -> list[dict[str, Any]]:
    """Every series matching ``match``, as the export API gives them (after a flush, so nothing
    written before the call is missing)."""
    async with httpx.AsyncClient(timeout=10) as client:
        (await client.get(f"{url}/internal/force_flush")).raise_for_status()
        response = await client.post(f"{url}/api/v1/export", data={"match[]": match})
        response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]
