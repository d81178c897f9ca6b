"""``iothub watch sse|ws|mqtt`` against a running hub: readable lines and JSON, filters, ``--from``,
``--count``, timeouts, and bad input as one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from iothub.testing import ChannelClient, HubUnderTest
from tests.cli_client import client_env, run, start

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\S+) (\S+) (.*)$")


async def test_sse_prints_one_readable_line_per_matching_event(tmp_path: Path, iothub_hub: HubUnderTest) -> None:
    watch = await start(tmp_path, client_env(iothub_hub), "watch", "sse", "--device", "th-1", "--type", "telemetry",
                        "--count", "2", "--timeout", "20")  # fmt: skip
    assert (await watch.ready()).startswith("watching types=telemetry devices=th-1 on sse http://127.0.0.1:")
    await iothub_hub.send_telemetry("th-2", {"temperature": 5})
    await iothub_hub.send_telemetry("th-1", {"temperature": 21.5, "humidity": 40})
    await iothub_hub.send_telemetry("th-1", {"door_open": True, "mode": "eco"})
    done = await watch.finished()
    assert done.code == 0, done.err
    parsed = [LINE.match(line) for line in done.lines]
    assert [m.groups() if m else line for m, line in zip(parsed, done.lines, strict=True)] == [
        ("th-1", "telemetry", "temperature=21.5 humidity=40"),
        ("th-1", "telemetry", "door_open=true mode=eco"),
    ]


@pytest.mark.parametrize("channel", ["ws", "grpc"])
async def test_json_lines_are_the_events_as_sse_sends_them(
    tmp_path: Path, iothub_hub: HubUnderTest, iothub_sse: ChannelClient, channel: str
) -> None:
    device = f"json-{channel}"
    args = ["watch", channel, "--device", device, "--metric", "temperature", "--count", "3", "--json"]
    watch = await start(tmp_path, client_env(iothub_hub), *args)
    await watch.ready()
    await iothub_hub.send_telemetry(device, {"temperature": 19.5, "humidity": 50})  # online, reading, offline
    done = await watch.finished()
    assert done.code == 0, done.err
    sent = [await iothub_sse.expect(kind, device=device) for kind in ("status", "telemetry", "status")]
    expected = [dict(e.data) for e in sent]
    expected[1]["metrics"] = {"temperature": 19.5}
    assert [json.loads(line) for line in done.lines] == expected


async def test_mqtt_shows_what_devices_publish_as_a_service_account(tmp_path: Path, iothub_hub: HubUnderTest) -> None:
    username, password = await iothub_hub.service_account("watcher", "observer")
    env = client_env(iothub_hub, username=username, password=password)
    args = ["watch", "mqtt", "--device", "th-4", "--metric", "temperature", "--count", "1", "--timeout", "20"]
    watch = await start(tmp_path, env, *args)
    assert "on mqtt mqtt://127.0.0.1:" in await watch.ready()
    await iothub_hub.send_telemetry("th-4", {"humidity": 50})  # none of the metrics asked for
    await iothub_hub.send_telemetry("th-4", {"temperature": 22, "humidity": 40})
    done = await watch.finished()
    assert done.code == 0, done.err
    assert [LINE.match(line).groups() for line in done.lines] == [("th-4", "telemetry", "temperature=22")]  # type: ignore[union-attr]


@pytest.mark.parametrize("channel", ["sse", "ws", "grpc"])
async def test_from_replays_what_came_after_an_event_id(
    tmp_path: Path, iothub_hub: HubUnderTest, iothub_sse: ChannelClient, channel: str
) -> None:
    for value in (1, 2, 3):
        await iothub_hub.send_telemetry("th-5", {"n": value})
    first = await iothub_sse.expect("telemetry", device="th-5", where={"n": 1})
    done = await run(tmp_path, client_env(iothub_hub), "watch", channel, "--device", "th-5", "--type", "telemetry",
                     "--from", str(first.id), "--count", "2", "--json")  # fmt: skip
    assert done.code == 0, done.err
    assert [json.loads(line)["metrics"] for line in done.lines] == [{"n": 2}, {"n": 3}]


@pytest.mark.parametrize("channel", ["sse", "ws", "grpc", "mqtt"])
async def test_a_timeout_says_what_it_waited_for_and_what_it_saw(
    tmp_path: Path, iothub_hub: HubUnderTest, channel: str
) -> None:
    username, password = await iothub_hub.service_account("timeout-watcher", "observer")
    env = client_env(iothub_hub, username=username, password=password)
    watch = await start(tmp_path, env, "watch", channel, "--device", "th-6", "--type", "telemetry", "--count", "2",
                        "--timeout", "3")  # fmt: skip
    await watch.ready()
    await iothub_hub.send_telemetry("th-6", {"temperature": 30.5})
    done = await watch.finished()
    assert done.code == 3, done
    [error] = done.err.splitlines()[1:]
    assert re.fullmatch(
        rf"Error: waited 3 s for 2 events matching types=telemetry devices=th-6 on {channel} \S+; "
        r"saw 1: \S+Z th-6 telemetry temperature=30.5",
        error,
    ), error


async def test_a_local_hub_is_found_from_its_own_settings(tmp_path: Path, iothub_hub: HubUnderTest) -> None:
    port = iothub_hub.url.rsplit(":", 1)[1]
    env = client_env(None, token=iothub_hub.token) | {"IOTHUB_HTTP__PORT": port}
    done = await run(tmp_path, env, "watch", "sse", "--timeout", "1")
    assert (done.code, done.err.strip()) == (0, f"watching anything on sse http://127.0.0.1:{port}"), done


async def test_without_count_the_timeout_is_how_long_to_watch(tmp_path: Path, iothub_hub: HubUnderTest) -> None:
    done = await run(tmp_path, client_env(iothub_hub), "watch", "ws", "--timeout", "1")
    assert (done.code, done.out) == (0, ""), done


@pytest.mark.parametrize(
    ("channel", "args", "error"),
    [
        (
            "sse",
            ["--type", "weather"],
            "option '--type': 'weather' is not one of telemetry, status, command_result, alert",
        ),
        ("ws", ["--device", "a b"], "option '--device': 'a b' is not a device id (or *)"),
        ("mqtt", ["--label", "site"], "option '--label': 'site' is not key=value"),
        ("sse", ["--metric", "t/x"], "option '--metric': metric names follow [A-Za-z0-9_.-]{{1,64}}"),
        ("mqtt", ["--from", "3"], "option '--from': MQTT has no event ids to resume from; use sse or ws"),
        ("mqtt", ["--label", "site=berlin"], "option '--label': MQTT does not carry device labels; use sse or ws"),
        ("sse", ["--from", "999999"], "GET {url}/api/v1/stream: 400 Last-Event-ID 999999 is ahead of the newest event"),
        ("ws", ["--from", "999999"], "{ws}: bad_resume: resume_from 999999 is ahead of the newest event"),
        ("sse", ["--token", "nope"], "GET {url}/api/v1/stream: 401 unknown API token"),
        ("ws", ["--token", "nope"], "{ws}: the hub closed the connection (4401): unknown API token"),
        ("sse", ["--url", "ftp://x"], "hub URL 'ftp://x': expected http://host:port or https://host:port"),
        ("grpc", ["--label", "site"], "option '--label': 'site' is not key=value"),
        ("grpc", ["--from", "999999"], "{grpc}: INVALID_ARGUMENT: resume_from 999999 is ahead of the newest event"),
        ("grpc", ["--token", "nope"], "{grpc}: UNAUTHENTICATED: "),
    ],
)
async def test_bad_input_is_one_line_naming_what_is_wrong(
    tmp_path: Path, iothub_hub: HubUnderTest, channel: str, args: list[str], error: str
) -> None:
    username, password = await iothub_hub.service_account("bad-input", "observer")
    env = client_env(iothub_hub, username=username, password=password)
    done = await run(tmp_path, env, "watch", channel, *args, "--timeout", "5")
    assert done.code == 1, done
    ws = iothub_hub.url.replace("http", "ws") + "/api/v1/ws"
    expected = "Error: " + error.format(url=iothub_hub.url, ws=ws, grpc=iothub_hub.grpc_address)
    assert done.err.splitlines()[-1].startswith(expected), done.err
    assert len([line for line in done.err.splitlines() if not line.startswith("watching ")]) == 1, done.err
    assert done.out == ""


async def test_an_unreachable_hub_is_one_line(tmp_path: Path) -> None:
    env = client_env(None, url="http://127.0.0.1:9", mqtt_url="mqtt://127.0.0.1:9", grpc_address="127.0.0.1:9")
    for channel in ("sse", "ws", "grpc", "mqtt"):
        done = await run(tmp_path, env, "watch", channel, "--timeout", "5")
        assert done.code == 1, done
        [line] = done.err.splitlines()
        assert re.match(
            r"Error: (cannot reach the hub at (http|ws)://127.0.0.1:9/|cannot connect to mqtt://127.0.0.1:9"
            r"|cannot reach the hub's gRPC API at 127.0.0.1:9: )",
            line,
        ), line


@pytest.mark.parametrize("channel", ["sse", "ws", "grpc", "mqtt"])
async def test_a_hub_that_stops_ends_the_watch_with_one_line(tmp_path: Path, channel: str) -> None:
    from iothub.hub.registry import Role
    from iothub.runner import serve
    from tests.conftest import hub_settings

    async with serve(hub_settings(tmp_path / "data")) as running:
        hub = HubUnderTest(running)
        _, password = running.hub.registry.add_account("stopping", Role.OBSERVER)
        watch = await start(tmp_path, client_env(hub, username="svc:stopping", password=password), "watch", channel)
        await watch.ready()
    done = await watch.finished()
    assert done.code == 1, done
    [error] = done.err.splitlines()[1:]
    assert error.startswith("Error: "), error
    assert "cannot reach" not in error  # it was reached: it went away
