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
from iothub.hub.registry import Scope
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


def token(hub: Running, scope: Scope) -> str:
    _, secret = hub.hub.registry.create_token(scope, f"ws-{scope}")
    return secret


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


S = {"subscription": "s"}
R = {"ref": "r"}
SUBSCRIBE = {"type": "subscribe", "id": "s"}
COMMAND = {"type": "command", "ref": "r", "device": "d", "name": "x"}


@pytest.mark.parametrize(
    ("frame", "code", "message", "extra"),
    [
        ("{nope", "bad_json", "not JSON", {}),
        ([1, 2], "bad_json", "expected a JSON object, got list", {}),
        ({"type": "subscribe_all"}, "unknown_type", "has type 'subscribe_all'; known types: auth,", {}),
        ({"id": "s"}, "unknown_type", "message has no 'type'", S),
        ({"type": "subscribe"}, "bad_message", "subscribe: field 'id': field required", {}),
        ({**SUBSCRIBE, "device": ["a"]}, "bad_message", "field 'device': extra", S),
        ({**SUBSCRIBE, "resume_from": -1}, "bad_message", "field 'resume_from'", S),
        ({**SUBSCRIBE, "resume_from": "x"}, "bad_message", "field 'resume_from'", S),
        ({**SUBSCRIBE, "types": ["weather"]}, "bad_filter", "field 'types': 'weather' is not one of", S),
        ({**SUBSCRIBE, "labels": ["berlin"]}, "bad_filter", "field 'labels': 'berlin' is not key=value", S),
        ({**SUBSCRIBE, "devices": ["a b"]}, "bad_filter", "field 'devices'", S),
        ({**SUBSCRIBE, "resume_from": 10**9}, "bad_resume", f"resume_from {10**9} is ahead of the newest event", S),
        ({"type": "unsubscribe", "id": "s"}, "unknown_subscription", "no subscription 's'", S),
        ({**COMMAND, "name": None}, "bad_message", "command: field 'name': input should be a valid string", R),
        ({**COMMAND, "timeout": 0}, "bad_message", "field 'timeout'", R),
        ({**COMMAND, "args": [1]}, "bad_message", "field 'args'", R),
    ],
)
async def test_a_bad_frame_gets_an_error_and_the_connection_stays(
    client: WsClient, frame: object, code: str, message: str, extra: dict[str, str]
) -> None:
    await client.connection.send(frame if isinstance(frame, str) else json.dumps(frame))
    error = await client.next()
    assert error["type"] == "error"
    assert error["code"] == code
    assert message in error["message"], error["message"]
    assert {k: error[k] for k in ("ref", "subscription") if k in error} == extra
    await client.send("ping", data=1)
    assert await client.next() == {"type": "pong", "data": 1}


async def test_duplicate_ids_and_limits(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", ws={"max_subscriptions": 2, "max_pending_commands": 1})
    async with serve(settings) as running, ws_client(running) as client:
        await client.subscribe("a")
        await client.send("subscribe", id="a")
        assert (await client.next())["code"] == "duplicate_subscription"
        await client.subscribe("b")
        await client.send("subscribe", id="c")
        limit = await client.next()
        assert (limit["code"], limit["subscription"]) == ("too_many_subscriptions", "c")
        running.hub.registry.add_device("quiet")
        device = unique_id()
        async with mqtt_client(running, device) as mqtt:
            await mqtt.publish(f"devices/{device}/status", b'{"online": true}', qos=1)
            await client.until(lambda f: f.get("event") == "status" and f["data"]["device_id"] == device)
            await client.send("command", ref="r", device=device, name="x", timeout=WAIT_S)
            await client.send("command", ref="r", device=device, name="x")
            await client.send("command", ref="s", device=device, name="x")
            errors = [await client.until(lambda f: f["type"] == "error") for _ in range(2)]
    assert [(e["code"], e["ref"]) for e in errors] == [("duplicate_ref", "r"), ("too_many_commands", "s")]


async def test_close_codes_for_tokens(hub: Running) -> None:
    async with ws_client(hub, "iothub_nope") as wrong:
        assert await wrong.closed() == (4401, "unknown API token")
    async with ws_client(hub, header=False) as first_not_auth:
        await first_not_auth.send("subscribe", id="s")
        assert await first_not_auth.closed() == (4401, "authenticate first: send 'auth' before 'subscribe'")
    async with ws_client(hub, header=False) as garbage:
        await garbage.connection.send("hello")
        code, reason = await garbage.closed()
        assert (code, reason.startswith("authenticate first: not JSON")) == (4401, True)
    reader = token(hub, Scope.READ)
    async with ws_client(hub, reader) as read_only:
        await read_only.subscribe("s")  # a read token may subscribe...
        await read_only.send("command", ref="r", device="d", name="x")  # ...but not command
        code, reason = await read_only.closed()
    assert code == 4403
    assert reason.endswith("has scope 'read'; commands need 'command'")


async def test_no_token_in_time_closes(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", ws={"auth_timeout_s": 0.3})
    async with serve(settings) as running, ws_client(running, header=False) as silent:
        code, reason = await silent.closed()
    assert code == 4401
    assert reason.startswith("no token within 0.3 s")


async def test_a_revoked_token_ends_the_connection(hub: Running) -> None:
    record, secret = hub.hub.registry.create_token(Scope.READ, "to-revoke")
    async with ws_client(hub, secret) as client:
        await client.subscribe("s")
        hub.hub.registry.revoke_token(record.id)
        code, reason = await client.closed()
    assert (code, reason) == (4401, f"API token {record.id!r} has been revoked")


async def test_an_oversized_frame_closes_with_1009(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", ws={"max_message_bytes": 1024})
    async with serve(settings) as running, ws_client(running) as client:
        await client.send("ping", data="x" * 900)
        assert (await client.next())["type"] == "pong"  # just under the limit
        await client.send("ping", data="x" * 2000)
        code, _ = await client.closed()
    assert code == 1009


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
