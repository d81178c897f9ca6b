"""``scripts/demo`` as a supervisor runs it: started, then stopped by a signal to its PID alone."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import httpx
import psutil
import pytest

pytestmark = pytest.mark.e2e
DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo"
DEADLINE_S = 30.0


class Lines:
    """The lines a process prints, read on a thread so that every wait can have a deadline."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)

    def until(self, pattern: str) -> re.Match[str]:
        end = time.monotonic() + DEADLINE_S
        while (left := end - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} within {DEADLINE_S} s")


def fleet_online(http: str, token: str, devices: int) -> None:
    end = time.monotonic() + DEADLINE_S
    online = 0
    while time.monotonic() < end:
        answer = httpx.get(f"{http}/api/v1/devices", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        online = sum(d["online"] for d in answer.json()["devices"])
        if online == devices:
            return
        time.sleep(0.1)
    raise AssertionError(f"{online} of {devices} simulated devices online after {DEADLINE_S} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_demo_stops_hub_and_fleet(tmp_path: Path, sig: signal.Signals) -> None:
    env = {**os.environ, "DEVICES": "2", "RATE": "5", "DEMO_SETUP": "0"}  # .venv exists: no pip install
    args = [
        "--mqtt-port",
        "0",
        "--mqtt-ws-port",
        "0",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    with (tmp_path / "stderr").open("w") as stderr, subprocess.Popen(
        [str(DEMO), *args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, start_new_session=True
    ) as demo:  # fmt: skip
        children: list[psutil.Process] = []
        try:
            lines = Lines(demo.stdout)
            bound = lines.until(r"iothub listening: mqtt=\S+:(\d+) mqtt_ws=\S+:(\d+) http=(http://\S+:(\d+))")
            token = lines.until(r"token was created \(shown once\): (\S+)")[1]
            fleet_online(bound[3], token, devices=2)
            children = psutil.Process(demo.pid).children(recursive=True)
            commands = [" ".join(child.cmdline()) for child in children]
            assert any(" run " in c for c in commands), commands
            assert any(" simulate " in c for c in commands), commands

            demo.send_signal(sig)  # the script's PID only, as `kill PID` or `docker stop` would
            assert demo.wait(timeout=DEADLINE_S) == 0
            _, alive = psutil.wait_procs(children, timeout=DEADLINE_S)
            assert not alive, [" ".join(p.cmdline()) for p in alive]
        finally:
            if demo.poll() is None or any(child.is_running() for child in children):
                os.killpg(demo.pid, signal.SIGKILL)  # the session this test started, nothing else
    for port in (bound[1], bound[2], bound[4]):
        socket.create_server(("127.0.0.1", int(port))).close()  # free again
    assert "hub stopped" in (tmp_path / "stderr").read_text()
