"""The examples under ``docs/`` work as written, against a real hub."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from iothub.runner import Running, serve
from iothub.testing import ChannelClient, Fleet, HubUnderTest
from tests.conftest import WAIT_S, device_secret, hub_settings, mqtt_client, telemetry, unique_id

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
PUBLISH_TELEMETRY = EXAMPLES / "publish_telemetry.py"
WS_APP = EXAMPLES / "ws_app.py"


async def run_example(
    *args: str, env: dict[str, str] | None = None, script: Path = PUBLISH_TELEMETRY
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), *args,
        env={**os.environ, **(env or {})}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(WAIT_S * 3):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def stored_temperatures(http: httpx.AsyncClient, device_id: str) -> list[float]:
    answer = await http.get(f"/api/v1/devices/{device_id}/telemetry", params={"metric": "temperature"})
    assert answer.status_code == 200, answer.text
    return [value for _, value in answer.json()["series"]["temperature"]]


async def test_publish_telemetry_stores_a_point(hub: Running, http: httpx.AsyncClient) -> None:
    device_id = unique_id("example")
    secret = device_secret(hub, device_id)
    port = str(hub.ports["mqtt"])
    args = ("--host", "127.0.0.1", "--port", port, "--device", device_id)
    code, out, err = await run_example(*args, "--secret", secret, "--temperature", "19.75")
    assert (code, err) == (0, ""), err
    assert out == f"published temperature=19.75 for {device_id}\n"
    assert await stored_temperatures(http, device_id) == [19.75]  # QoS 1: stored once it returns
    # The same from the environment, with the default value.
    env = {"MQTT_HOST": "127.0.0.1", "MQTT_PORT": port, "DEVICE_ID": device_id, "DEVICE_SECRET": secret}
    code, _, err = await run_example(env=env)
    assert (code, err) == (0, ""), err
    assert await stored_temperatures(http, device_id) == [19.75, 21.5]


async def test_publish_telemetry_says_in_one_line_why_it_was_refused(hub: Running) -> None:
    device_id = unique_id("example")
    secret = device_secret(hub, device_id)
    port = str(hub.ports["mqtt"])
    code, out, err = await run_example("--port", port, "--device", device_id, "--secret", "not-the-secret")
    assert (code, out) == (1, "")
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    where = f"publish_telemetry: {device_id} at 127.0.0.1:{port}"
    assert err == f"{where}: refused (CONNACK 0x04): unknown device or wrong secret\n"
    hub.hub.registry.set_enabled(device_id, False)
    code, _, err = await run_example("--port", port, "--device", device_id, "--secret", secret)
    assert code == 1
    assert err == f"{where}: refused (CONNACK 0x05): not authorised (is the device disabled?)\n"
    code, _, err = await run_example("--port", port)
    assert code == 2
    assert "a device id and secret are needed" in err


@pytest.mark.iothub_fleet(devices=1, rate=5)
async def test_the_websocket_app_follows_and_commands_a_simulated_device(
    iothub_hub: HubUnderTest, iothub_fleet: Fleet, iothub_sse: ChannelClient
) -> None:
    device, url, token = iothub_fleet.ids[0], iothub_hub.target.ws_url, iothub_hub.token
    first = await iothub_sse.expect("telemetry", device=device)
    code, out, err = await run_example("--url", url, "--token", token, "--device", device, script=WS_APP)
    resumed = await run_example(  # the URL and token of `iothub watch`, from the environment
        "--device", device, "--count", "1", "--resume-from", str(first.id), script=WS_APP,
        env={"IOTHUB_CLIENT__URL": iothub_hub.target.url, "IOTHUB_CLIENT__TOKEN": token},
    )  # fmt: skip
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    readings = [line for line in lines if not line.startswith("command ")]
    assert len(readings) >= 3
    assert all(line.split()[1].startswith("temperature=") for line in readings)
    assert [line for line in lines if line.startswith("command ")] == [
        next(line for line in lines if line.startswith('command ping: ok {"pong": true'))
    ]
    assert resumed[0] == 0, resumed[2]
    assert first.id is not None
    assert first.id < int(resumed[1].split()[0]) <= int(lines[0].split()[0])  # replayed from after first


async def test_the_websocket_app_says_in_one_line_why_it_was_refused(hub: Running) -> None:
    url = f"ws://{hub.address('http')}/api/v1/ws"
    code, out, err = await run_example("--url", url, "--token", "iothub_nope", "--device", "d", script=WS_APP)
    assert (code, out) == (1, "")
    assert err == "ws_app: the hub closed the connection (4401): unknown API token\n"


WEBHOOK_RECEIVER = PUBLISH_TELEMETRY.parent / "webhook_receiver.py"


async def test_the_webhook_receiver_verifies_what_the_hub_signs(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", webhooks={"allow_private_targets": True})
    secret_file = tmp_path / "webhook-secret.txt"
    secret_file.write_text("whsec_" + "A" * 44)  # a placeholder until the endpoint exists
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(WEBHOOK_RECEIVER), "--port", "0", "--secret-file", str(secret_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(WAIT_S * 2), serve(settings) as hub:
            url = (await process.stdout.readline()).decode().removeprefix("listening on ").strip()
            headers = {"Authorization": f"Bearer {hub.hub.first_token}"}
            async with httpx.AsyncClient(base_url=f"http://{hub.address('http')}", headers=headers) as http:
                rule = {"kind": "metric", "name": "hot", "metric": "temperature", "op": ">", "threshold": 30}
                assert (await http.post("/api/v1/rules", json=rule)).status_code == 201
                added = await http.post("/api/v1/webhooks", json={"url": url, "events": ["alert.firing"]})
                secret_file.write_text(added.json()["secret"])
                forged = await http.post(url, content=b"{}", headers={"webhook-id": "msg_x", "webhook-timestamp": "1"})
                assert forged.status_code == 400
            device_id = unique_id("example")
            async with mqtt_client(hub, device_id) as device:
                await device.publish(f"devices/{device_id}/telemetry", telemetry({"temperature": 31.5}), qos=1)
            msg_id, kind, data = (await process.stdout.readline()).decode().split(" ", 2)
    finally:
        process.kill()
        await process.wait()
    assert msg_id.startswith("msg_")
    assert kind == "alert.firing"
    assert json.loads(data) | {"event_id": 0} == {
        "device_id": device_id, "event_id": 0, "kind": "metric", "metric": "temperature", "rule": "hot",
        "state": "firing", "value": 31.5,
    }  # fmt: skip


async def test_the_websocket_app_says_what_it_waited_for(hub: Running) -> None:
    device = unique_id("quiet")
    hub.hub.registry.add_device(device)
    url = f"ws://{hub.address('http')}/api/v1/ws"
    token = hub.hub.first_token or ""
    args = ("--url", url, "--token", token, "--device", device, "--count", "1", "--within", "0.5")
    code, out, err = await run_example(*args, script=WS_APP)
    assert (code, out) == (1, "")
    assert err == f"ws_app: no 1 readings and command result from {device} within 0.5 s\n"
