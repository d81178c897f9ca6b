"""``iothub watch webhooks`` (a receiver that checks signatures), ``iothub command`` and
``iothub publish``, as a user runs them against a running hub."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from iothub.hub.signing import new_secret, signature_headers
from iothub.testing import ChannelClient, Fleet, HubUnderTest
from tests.cli_client import client_env, run, start
from tests.conftest import WAIT_S


@pytest.fixture
def iothub_settings() -> dict[str, Any]:
    """Webhooks to a loopback receiver, retried soon enough for a test (attempts 2 s apart after the second)."""
    return {
        "webhooks": {
            "allow_private_targets": True,
            "retry_schedule_s": [0, 0.2, 2, 2, 2, 2, 2],
            "jitter": 0,
            "breaker_failures": 100,
        }
    }


def listening_url(line: str) -> str:
    found = re.match(r"listening on (http://127\.0\.0\.1:\d+/) \(answering \d+\)$", line.strip())
    assert found, line
    return found[1]


async def test_the_receiver_verifies_signatures_and_refuses_bad_ones(tmp_path: Path) -> None:
    secret = new_secret()
    watch = await start(tmp_path, client_env(None), "watch", "webhooks", "--listen", "0", "--secret", secret,
                        "--count", "3", "--json")  # fmt: skip
    url = listening_url(await watch.ready())
    data = {"event_id": 7, "device_id": "th-1", "rule": "hot", "value": 31.5}
    body = json.dumps({"type": "alert.firing", "timestamp": "2026-11-24T10:00:00.000Z", "data": data}).encode()
    now = int(time.time())
    good = signature_headers("msg_good", now, body, [secret])
    tampered = signature_headers("msg_tampered", now, body, [secret])
    stale = signature_headers("msg_stale", now - 600, body, [secret])
    async with httpx.AsyncClient(timeout=WAIT_S) as client:
        answers = [
            (await client.post(url, content=b, headers=h)).status_code
            for b, h in ((body, good), (body.replace(b"31.5", b"99.9"), tampered), (body, stale))
        ]
    done = await watch.finished()
    assert done.code == 0, done.err
    assert answers == [204, 401, 401]
    seen = [json.loads(line) for line in done.lines]
    assert [(d["webhook_id"], d["status"]) for d in seen] == [
        ("msg_good", 204),
        ("msg_tampered", 401),
        ("msg_stale", 401),
    ]
    assert seen[0]["signature"] == "ok"
    assert seen[1]["signature"] == "signature does not match the secret"
    assert re.fullmatch(r"webhook-timestamp is 60\d s old \(over 300 s off\)", seen[2]["signature"])
    assert seen[0]["type"] == "alert.firing"
    assert seen[0]["data"]["rule"] == "hot"


async def test_the_receiver_prints_real_deliveries_their_retries_and_verifies_them(
    tmp_path: Path, iothub_hub: HubUnderTest
) -> None:
    failing = await start(tmp_path, client_env(None), "watch", "webhooks", "--listen", "0", "--status", "500",
                          "--count", "2")  # fmt: skip
    url = listening_url(await failing.ready())
    async with httpx.AsyncClient(
        base_url=iothub_hub.url, headers={"Authorization": f"Bearer {iothub_hub.token}"}
    ) as http:
        added = await http.post("/api/v1/webhooks", json={"url": url, "events": ["device.online"]})
    secret = added.json()["secret"]
    await iothub_hub.send_telemetry("hooked-1", {"temperature": 20})
    first = await failing.finished()
    assert first.code == 0, first.err
    pattern = (
        r"\S+Z hooked-1 device.online event_id=\d+ online=true reason=connected .*"
        r"\[signature unchecked; answered 500; (msg_\S+)\]"
    )
    ids = [re.fullmatch(pattern, line) for line in first.lines]
    assert all(ids), first.out
    assert len({m[1] for m in ids if m}) == 1, first.out  # one message, tried twice
    # the hub goes on retrying: a receiver on the same port with the secret sees it verify
    port = url.rsplit(":", 1)[1].rstrip("/")
    verifying = await start(tmp_path, client_env(None), "watch", "webhooks", "--listen", port, "--secret", secret,
                            "--count", "1")  # fmt: skip
    await verifying.ready()
    last = await verifying.finished(within=3 * WAIT_S)
    assert last.code == 0, last.err
    assert re.fullmatch(r"\S+Z hooked-1 device.online .*\[signature ok; answered 204; msg_\S+\]", last.out.strip())


async def test_a_receiver_with_a_bad_secret_or_port_says_so(tmp_path: Path) -> None:
    done = await run(tmp_path, client_env(None), "watch", "webhooks", "--listen", "0", "--secret", "abc")
    assert (done.code, done.err.strip()) == (1, "Error: option '--secret': a webhook secret starts with 'whsec_'")
    waiting = await run(
        tmp_path, client_env(None), "watch", "webhooks", "--listen", "0", "--count", "1", "--timeout", "1"
    )
    assert waiting.code == 3
    assert waiting.err.splitlines()[-1].startswith(
        "Error: waited 1 s for 1 event matching deliveries on 127.0.0.1:0; saw 0"
    )


@pytest.mark.iothub_fleet(devices=1, rate=1)
async def test_command_prints_the_device_answer(
    tmp_path: Path, iothub_hub: HubUnderTest, iothub_fleet: Fleet, iothub_sse: ChannelClient
) -> None:
    device = iothub_fleet.ids[0]
    done = await run(
        tmp_path, client_env(iothub_hub), "command", device, "set_setpoint", "--args", '{"setpoint": 19.5}'
    )
    assert done.code == 0, done.err
    assert re.fullmatch(rf'{device} set_setpoint: ok {{"setpoint": 19.5}} \(\d+ ms\)', done.out.strip()), done.out
    result = await iothub_sse.expect("command_result", device=device, where={"name": "set_setpoint", "ok": True})
    assert isinstance(result.id, int), result  # the event's id, not the request id its data carries
    as_json = await run(tmp_path, client_env(iothub_hub), "command", device, "ping", "--json")
    assert json.loads(as_json.out)["result"]["pong"] is True
    refused = await run(tmp_path, client_env(iothub_hub), "command", device, "fly")
    assert refused.code == 1
    assert (
        refused.err.strip()
        == f"Error: {device} fly: the device answered with an error: unknown command 'fly' for a thermostat"
    )


async def test_command_errors_are_one_line_with_their_exit_status(tmp_path: Path, iothub_hub: HubUnderTest) -> None:
    env = client_env(iothub_hub)
    unknown = await run(tmp_path, env, "command", "ghost", "ping")
    assert (unknown.code, unknown.err.strip()) == (
        1, f"Error: POST {iothub_hub.url}/api/v1/devices/ghost/commands/ping: 404 no device 'ghost'"
    )  # fmt: skip
    async with await iothub_hub.device("mute-1") as mute:  # subscribed to its commands, never answers
        await mute.subscribe("devices/mute-1/commands/#", qos=1)
        silent = await run(tmp_path, env, "command", "mute-1", "ping", "--timeout", "1")
    assert (silent.code, silent.err.strip()) == (3, "Error: mute-1 ping: no answer from the device in 1 s")
    bad_args = await run(tmp_path, env, "command", "mute-1", "ping", "--args", "[1]")
    assert bad_args.code == 2
    assert "Invalid value for --args: must be a JSON object" in bad_args.err


async def test_publish_as_a_service_account(
    tmp_path: Path, iothub_hub: HubUnderTest, iothub_sse: ChannelClient
) -> None:
    await iothub_hub.add_device("pub-1")
    username, password = await iothub_hub.service_account("publisher", "service")
    env = client_env(iothub_hub, username=username, password=password)
    done = await run(tmp_path, env, "publish", "devices/pub-1/telemetry", '{"metrics": {"level": 3}}')
    assert (done.code, done.out.strip()) == (0, "published 25 bytes on devices/pub-1/telemetry (QoS 1)"), done.err
    await iothub_sse.expect("telemetry", device="pub-1", where={"level": 3})
    wrong = await run(tmp_path, client_env(iothub_hub, username=username, password="wrong"), "publish", "a/b", "x")
    assert wrong.code == 1
    [line] = wrong.err.splitlines()
    assert line.startswith(f"Error: cannot publish to mqtt://127.0.0.1:{iothub_hub.mqtt_port} as {username}: ")
    wildcard = await run(tmp_path, env, "publish", "devices/+/telemetry", "x")
    assert (wildcard.code, wildcard.err.strip()) == (
        1, "Error: topic 'devices/+/telemetry': a topic to publish on has no wildcards (+, #) and is not empty"
    )  # fmt: skip


async def test_publish_reads_the_payload_from_stdin(
    tmp_path: Path, iothub_hub: HubUnderTest, iothub_sse: ChannelClient
) -> None:
    await iothub_hub.add_device("pub-2")
    username, password = await iothub_hub.service_account("stdin-publisher", "service")
    env = client_env(iothub_hub, username=username, password=password)
    from tests.cli_client import IOTHUB

    process = await asyncio.create_subprocess_exec(
        *IOTHUB, "publish", "devices/pub-2/telemetry", "-", cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(WAIT_S):
        _out, err = await process.communicate(b'{"metrics": {"level": 4}}')
    assert process.returncode == 0, err
    await iothub_sse.expect("telemetry", device="pub-2", where={"level": 4})
