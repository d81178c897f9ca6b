"""At-least-once across ``kill -9``: the real ``iothub run`` killed while a webhook waits for its
retry delivers it after a restart, with the same ``webhook-id``."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.bridge.receiver import Received, Reply, receiver
from tests.conftest import WAIT_S
from tests.mqtt_raw import raw_connect

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def hub_process(data_dir: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, str]]]:
    """``iothub run`` on free ports; yields it with its addresses (and the token on a first start)."""
    env = {
        **os.environ,
        "IOTHUB_DATA_DIR": str(data_dir),
        "IOTHUB_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
        "IOTHUB_WEBHOOKS__RETRY_SCHEDULE_S": "[1, 1, 1, 1]",
        "IOTHUB_WEBHOOKS__JITTER": "0",
        "IOTHUB_WEBHOOKS__POLL_S": "0.2",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iothub", "run",
        "--grpc-port", "0", "--mqtt-port", "0", "--mqtt-ws-port", "0", "--http-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env, cwd=data_dir.parent,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT_S * 2):
            line = (await proc.stdout.readline()).decode()
            found = re.match(r"iothub listening: mqtt=(\S+) mqtt_ws=\S+ http=(\S+)", line)
            assert found, f"unexpected first line {line!r}"
            addresses = {"mqtt": found[1], "http": found[2]}
            if not (data_dir / "started-once").exists():
                token = re.search(r"\(shown once\): (\S+)", (await proc.stdout.readline()).decode())
                assert token
                addresses["token"] = token[1]
                (data_dir / "started-once").write_text(token[1])
        yield proc, addresses
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_hub_killed_mid_retry_delivers_after_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    attempts: Counter[str] = Counter()

    def answer(got: Received) -> Reply:
        attempts[got.msg_id] += 1
        return Reply(500) if attempts[got.msg_id] <= 2 else Reply(200)

    async with receiver(answer) as r:
        async with hub_process(data_dir) as (proc, at):
            headers = {"Authorization": f"Bearer {at['token']}"}
            async with httpx.AsyncClient(base_url=at["http"], headers=headers, timeout=WAIT_S) as http:
                added = await http.post("/api/v1/webhooks", json={"url": r.url, "events": ["device.online"]})
                assert added.status_code == 201, added.text
                device = await http.post("/api/v1/devices", json={"id": "kill-1"})
                assert device.status_code == 201, device.text
            port = int(at["mqtt"].rsplit(":", 1)[1])
            _, writer, connack = await raw_connect(port, "kill-1", username="kill-1", password=device.json()["secret"])
            assert connack.body[1] == 0  # accepted: the device is online, a device.online webhook is due
            try:
                await r.wait_for(lambda got: len(got) == 1)  # the first attempt failed; a retry is due in 1 s
                proc.kill()  # SIGKILL: no shutdown, no flush
                await proc.wait()
            finally:
                writer.transport.abort()
        first = r.received[0]
        assert first.json()["type"] == "device.online"
        async with hub_process(data_dir):
            await r.wait_for(lambda got: any(g.msg_id == first.msg_id and attempts[g.msg_id] >= 3 for g in got))
        delivered = [g for g in r.received if g.msg_id == first.msg_id]
        assert len(delivered) == 3  # 500 before the kill, 500 and 200 after the restart
        assert r.accepted() == [delivered[-1]]
