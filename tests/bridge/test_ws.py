"""The WebSocket bridge: a real ``websockets`` client against a running hub."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from iothub.bridge.live import CommandStatus, ErrorCode, parse
from iothub.runner import Running, serve
from iothub.testing import Fleet, HubUnderTest
from tests.bridge.ws_client import WsClient, ws_client, ws_url
from tests.conftest import WAIT_S, EventWaiter, hub_settings, mqtt_client, service_client, telemetry, unique_id
from tests.hub.test_commands import answering_device

NO_LONGER = "no longer stored"


@pytest.fixture
async def client(hub: Running) -> AsyncIterator[WsClient]:
    async with ws_client(hub) as connection:
        yield connection


async def test_subscribe_and_receive(hub: Running, client: WsClient) -> None:
    device = unique_id()
    await client.subscribe("live", devices=[device])
    async with mqtt_client(hub, device) as mqtt:
        await mqtt.publish(f"devices/{device}/telemetry", telemetry({"t": 21.5}, seq=7), qos=1)
        event = await client.until(lambda f: f.get("event") == "telemetry")
    assert event["type"] == "event"
    assert event["subscription"] == "live"
    assert event["data"]["metrics"] == {"t": 21.5}
    assert event["data"]["device_id"] == device
    assert event["id"] == event["data"]["id"] > 0


async def test_the_token_can_come_three_ways(hub: Running) -> None:
    admin = hub.hub.first_token
    assert admin is not None
    async with ws_client(hub, header=False, url=f"{ws_url(hub)}?access_token={admin}") as by_query:
        await by_query.send("ping", data="q")
        assert await by_query.next() == {"type": "pong", "data": "q"}
    async with ws_client(hub, header=False) as by_frame:
        await by_frame.send("auth", token=admin)
        greeting = await by_frame.next()
        assert greeting["type"] == "authenticated"
        assert greeting["scope"] == "admin"
        await by_frame.send("auth", token=admin)
        again = await by_frame.next()
        assert again["code"] == "already_authenticated"


async def test_two_subscriptions_with_their_own_filters(hub: Running, client: WsClient) -> None:
    a, b = unique_id("a"), unique_id("b")
    hub.hub.registry.add_device(b, labels={"site": "berlin"})
    await client.subscribe("only-a", devices=[a], types=["telemetry"], metrics=["t"])
    await client.subscribe("berlin", labels=["site=berlin"])
    async with mqtt_client(hub, a) as dev_a, service_client(hub, "gw") as gw:
        await dev_a.publish(f"devices/{a}/status", b'{"online": true}', qos=1)
        await gw.publish(f"devices/{b}/telemetry", telemetry({"t": 2}), qos=1)
        await dev_a.publish(f"devices/{a}/telemetry", telemetry({"t": 1, "h": 50}), qos=1)
        got: dict[str, list[dict[str, object]]] = {"only-a": [], "berlin": []}
        while not (got["only-a"] and got["berlin"]):
            frame = await client.next()
            got[frame["subscription"]].append(frame["data"])
    assert [(d["device_id"], d["metrics"]) for d in got["only-a"]] == [(a, {"t": 1})]
    assert [d["device_id"] for d in got["berlin"]] == [b]


async def test_resume_gives_exactly_what_was_missed(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as mqtt:
        async with ws_client(hub) as first:
            await first.subscribe("s", devices=[device], types=["telemetry"])
            await mqtt.publish(f"devices/{device}/telemetry", telemetry({"n": 0}, seq=0), qos=1)
            seen = await first.next()
        for n in (1, 2, 3):  # while the app is away
            await mqtt.publish(f"devices/{device}/telemetry", telemetry({"n": n}, seq=n), qos=1)
        await events.until(lambda e: e.data.get("seq") == 3)
        async with ws_client(hub) as again:
            await again.send("subscribe", id="s", devices=[device], types=["telemetry"], resume_from=seen["id"])
            assert await again.next() == {"type": "subscribed", "subscription": "s"}
            replayed = [await again.next() for _ in range(3)]
            await mqtt.publish(f"devices/{device}/telemetry", telemetry({"n": 4}, seq=4), qos=1)
            live = await again.next()
            await again.send("ping")
            assert await again.next() == {"type": "pong", "data": None}  # nothing else came between
    assert [f["data"]["seq"] for f in [*replayed, live]] == [1, 2, 3, 4]
    ids = [f["id"] for f in [seen, *replayed, live]]
    assert ids == sorted(set(ids))


async def test_events_no_longer_stored_are_a_gap(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", store={"event_retention": 1000})
    async with serve(settings) as running:
        waiter = EventWaiter(running.hub.bus.subscribe("t", maxsize=5000))
        device = unique_id()
        async with mqtt_client(running, device) as mqtt:
            for n in range(1200):
                await mqtt.publish(f"devices/{device}/telemetry", telemetry({"n": n}, seq=n), qos=0)
            await waiter.until(lambda e: e.data.get("seq") == 1199, within=30)
        await waiter.status_of(device, online=False)
        oldest, _ = await running.hub.store.event_bounds()
        async with ws_client(running) as client:
            await client.subscribe("s", resume_from=0)
            gap = await client.next()
            first = await client.next()
    assert oldest > 1
    assert gap == {
        "type": "gap",
        "subscription": "s",
        "missed": oldest - 1,
        "after_id": 0,
        "reason": "no longer stored",
    }
    assert first["id"] == oldest


async def test_unsubscribe_stops_the_events(hub: Running, client: WsClient) -> None:
    device = unique_id()
    await client.subscribe("s", devices=[device])
    await client.send("unsubscribe", id="s")
    assert await client.next() == {"type": "unsubscribed", "subscription": "s"}
    await client.subscribe("t", devices=[device], types=["telemetry"])  # the same connection goes on
    async with mqtt_client(hub, device) as mqtt:
        await mqtt.publish(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1)
        event = await client.next()
    assert event["subscription"] == "t"  # and nothing for "s" before it


@pytest.mark.iothub_fleet(devices=1, rate=2)
async def test_commands_to_a_simulated_device(iothub_hub: HubUnderTest, iothub_fleet: Fleet) -> None:
    device = iothub_fleet.ids[0]
    async with ws_client(iothub_hub.running) as client:
        await client.send("command", ref="r1", device=device, name="ping", timeout=WAIT_S)
        await client.send("command", ref="r2", device=device, name="launch", args={"x": 1}, timeout=WAIT_S)
        results: dict[str, dict[str, Any]] = {}
        while len(results) < 2:
            frame = await client.until(lambda f: f["type"] == "command_result")
            results[frame["ref"]] = frame
    ok, failed = results["r1"], results["r2"]
    assert (ok["status"], ok["device"], ok["name"], ok["result"]["pong"]) == ("ok", device, "ping", True)
    assert isinstance(ok["id"], str)
    assert ok["latency_ms"] >= 0
    assert failed["status"] == "device_error"
    assert failed["error"] == "unknown command 'launch' for a thermostat"


async def test_command_failures_each_have_a_status(hub: Running, client: WsClient, events: EventWaiter) -> None:
    silent, offline = unique_id("silent"), unique_id("offline")
    hub.hub.registry.add_device(offline)
    async with answering_device(hub, events, silent, answer=False):
        await client.send("command", ref="t", device=silent, name="x", timeout=0.2)
        await client.send("command", ref="o", device=offline, name="x")
        await client.send("command", ref="u", device="ghost", name="x")
        await client.send("command", ref="b", device=silent, name="a/b")
        results: dict[str, dict[str, Any]] = {}
        while len(results) < 4:
            frame = await client.next()
            results[frame["ref"]] = frame
    assert {ref: frame["status"] for ref, frame in results.items()} == {
        "t": "timeout",
        "o": "offline",
        "u": "unknown_device",
        "b": "bad_command",
    }
    assert results["t"]["error"] == f"device '{silent}' did not answer 'x' within 0.2 s (sent)"
    assert results["u"]["error"] == "no device 'ghost'"


async def test_the_hub_stopping_closes_with_1001(tmp_path: Path) -> None:
    running_ctx = serve(hub_settings(tmp_path / "data"))
    running = await running_ctx.__aenter__()
    try:
        async with ws_client(running) as client:
            await client.subscribe("s")
            stopping = asyncio.create_task(running_ctx.__aexit__(None, None, None))
            code, reason = await client.closed()
            async with asyncio.timeout(WAIT_S):
                await stopping
    finally:
        if not stopping.done():
            await running_ctx.__aexit__(None, None, None)
    assert (code, reason) == (1001, "the hub is shutting down")


async def test_server_pings_drop_a_client_that_never_answers(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", ws={"ping_interval_s": 0.2, "ping_timeout_s": 0.2})
    async with serve(settings) as running:
        headers = {"Authorization": f"Bearer {running.hub.first_token}"}
        # ping_interval=None: this client never pings; with the transport paused it never pongs either
        async with asyncio.timeout(WAIT_S):
            connection = await connect(ws_url(running), additional_headers=headers, ping_interval=None)
        client = WsClient(connection)
        await client.subscribe("s")
        connection.transport.pause_reading()  # a client that is gone: nothing it receives is answered
        consumers = running.hub.metrics.registry.get_sample_value
        for _ in range(200):  # bounded: 10 s
            if consumers("iothub_stream_clients", {"channel": "ws"}) == 0:
                break
            await asyncio.sleep(0.05)
        assert consumers("iothub_stream_clients", {"channel": "ws"}) == 0
        connection.transport.resume_reading()
        code, reason = await client.closed()
    assert (code, reason) == (1011, "keepalive ping timeout")


def stuck_client(running: Running, subscribe: dict[str, Any]) -> socket.socket:
    """A WebSocket client (raw socket, tiny receive buffer) that subscribes and then never reads."""
    protocol = ClientProtocol(parse_uri(ws_url(running)))
    request = protocol.connect()
    request.headers["Authorization"] = f"Bearer {running.hub.first_token}"
    protocol.send_request(request)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT_S)
    sock.connect(("127.0.0.1", running.ports["http"]))
    sock.sendall(b"".join(protocol.data_to_send()))
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        assert chunk, "the hub closed during the handshake"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    protocol.receive_data(response)  # the handshake completes
    protocol.send_text(json.dumps(subscribe).encode())
    sock.sendall(b"".join(protocol.data_to_send()))
    return sock


def read_to_the_end(sock: socket.socket) -> int:
    """Bytes read until the hub closes the connection (a reset counts), within WAIT_S per read."""
    total = 0
    for _ in range(100_000):  # bounded: the hub buffers a few MB at most for one client
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return total
        if not chunk:
            return total
        total += len(chunk)
    raise AssertionError("the connection was never closed")


async def test_a_client_that_stops_reading_is_dropped_and_disturbs_nobody(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", ws={"queue_size": 20, "max_dropped": 500, "send_timeout_s": 1})
    async with serve(settings) as running, ws_client(running) as reader:
        quiet, busy = unique_id("quiet"), unique_id("busy")
        await reader.subscribe("quiet", devices=[quiet], types=["telemetry"])
        stuck = await asyncio.to_thread(stuck_client, running, {"type": "subscribe", "id": "all"})
        sample = running.hub.metrics.registry.get_sample_value
        try:
            async with mqtt_client(running, busy) as noisy, mqtt_client(running, quiet) as calm:
                # ~8 MB: more than the kernel and uvicorn buffer for the stuck client
                padding = {f"pad{i}": "x" * 250 for i in range(10)}
                for n in range(3000):
                    await noisy.publish(f"devices/{busy}/telemetry", telemetry({**padding, "n": n}), qos=0)
                await calm.publish(f"devices/{quiet}/telemetry", telemetry({"t": 1}), qos=1)
                event = await reader.next()
            assert event["data"]["metrics"] == {"t": 1}
            for _ in range(200):  # bounded: 10 s
                if sample("iothub_stream_disconnected_slow_total", {"channel": "ws"}) == 1:
                    break
                await asyncio.sleep(0.05)
            assert sample("iothub_stream_disconnected_slow_total", {"channel": "ws"}) == 1
            assert (sample("iothub_stream_dropped_total", {"channel": "ws"}) or 0) > 0
            assert sample("iothub_stream_clients", {"channel": "ws"}) == 1  # the reader's
            assert await asyncio.to_thread(read_to_the_end, stuck) > 0  # the hub hung up on it
        finally:
            stuck.close()


def test_the_documented_session_is_the_protocol() -> None:
    """Every frame of docs/websocket.md's example session is a message of the protocol."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "websocket.md").read_text()
    session = doc.split("## A session", 1)[1].split("```", 2)[1]
    sent = [line[2:] for line in session.splitlines() if line.startswith("> ")]
    got = [line[2:] for line in session.splitlines() if line.startswith("< ")]
    assert {parse(frame).type for frame in sent} == {"auth", "subscribe", "command", "ping", "unsubscribe"}
    kinds = set()
    for frame in got:
        if "..." in frame:  # an elided event body
            continue
        answer = json.loads(frame)
        kinds.add(answer["type"])
        if answer["type"] == "error":
            assert ErrorCode(answer["code"])
        if answer["type"] == "command_result":
            assert CommandStatus(answer["status"])
    assert kinds == {"authenticated", "subscribed", "event", "command_result", "error", "pong", "unsubscribed"}


async def test_a_client_still_to_authenticate_hears_1001_when_the_hub_stops(tmp_path: Path) -> None:
    running_ctx = serve(hub_settings(tmp_path / "data", ws={"auth_timeout_s": 60}))
    running = await running_ctx.__aenter__()
    stopping: asyncio.Task[bool | None] | None = None
    try:
        async with ws_client(running, header=False) as waiting:  # it has sent no token
            stopping = asyncio.create_task(running_ctx.__aexit__(None, None, None))
            closed = await waiting.closed()  # within WAIT_S, long before the auth timeout
    finally:
        if stopping is None:
            await running_ctx.__aexit__(None, None, None)
        else:
            async with asyncio.timeout(WAIT_S):
                await stopping
    assert closed == (1001, "the hub is shutting down")


async def test_a_client_that_stops_reading_replies_is_dropped(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", ws={"send_timeout_s": 1, "max_message_bytes": 1 << 20})
    async with serve(settings) as running:
        stuck = await asyncio.to_thread(stuck_client, running, {"type": "ping"})
        sample = running.hub.metrics.registry.get_sample_value
        try:
            protocol = ClientProtocol(parse_uri(ws_url(running)))  # only to build masked frames
            protocol.state = protocol.state.__class__.OPEN
            ping = {"type": "ping", "data": "x" * 50_000}
            stuck.setblocking(False)
            for _ in range(400):  # until the hub stops reading (it waits to write pongs nobody reads)
                protocol.send_text(json.dumps(ping).encode())
                try:
                    stuck.sendall(b"".join(protocol.data_to_send()))
                except BlockingIOError:
                    break
            for _ in range(200):  # bounded: 10 s
                if sample("iothub_ws_connections") == 0:
                    break
                await asyncio.sleep(0.05)
            assert sample("iothub_ws_connections") == 0
        finally:
            stuck.close()


async def test_answers_come_in_the_order_of_the_frames(hub: Running, client: WsClient) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as mqtt:
        await client.send("subscribe", id="a", devices=[device])
        await client.send("ping", data=1)
        await client.send("unsubscribe", id="a")
        await client.send("subscribe", id="a", devices=[device], types=["telemetry"])  # the id again
        await client.send("subscribe", id="a")
        await client.send("ping", data=2)
        answers = [await client.next() for _ in range(6)]
        await mqtt.publish(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1)
        event = await client.until(lambda f: f["type"] == "event")
    assert [(a["type"], a.get("subscription"), a.get("data"), a.get("code")) for a in answers] == [
        ("subscribed", "a", None, None),
        ("pong", None, 1, None),
        ("unsubscribed", "a", None, None),
        ("subscribed", "a", None, None),
        ("error", "a", None, "duplicate_subscription"),
        ("pong", None, 2, None),
    ]
    assert (event["subscription"], event["event"]) == ("a", "telemetry")
