"""The SSE stream, read by a real HTTP client from a real hub."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import httpx
import pytest

from iothub.bridge.http import HttpServer, create_app
from iothub.hub.core import Hub
from iothub.hub.registry import Scope as TokenScope
from iothub.runner import Running, serve
from tests.bridge.sse_client import SseStream, open_stream
from tests.conftest import WAIT_S, EventWaiter, hub_settings, mqtt_client, service_client, telemetry, unique_id


async def drain(stream: SseStream) -> None:
    while True:
        await stream.next(within=10)


def http_client(running: Running, token: str | None = None) -> httpx.AsyncClient:
    token = token or running.hub.first_token
    return httpx.AsyncClient(
        base_url=f"http://{running.address('http')}", headers={"Authorization": f"Bearer {token}"}, timeout=WAIT_S
    )


@pytest.fixture
async def api(hub: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(hub) as client:
        yield client


async def test_live_events_with_ids_and_headers(hub: Running, api: httpx.AsyncClient) -> None:
    device = unique_id()
    async with open_stream(api) as stream:
        assert stream.response.status_code == 200
        headers = stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        async with mqtt_client(hub, device) as client:
            await client.publish(f"devices/{device}/status", b'{"online": true}', qos=1)
            await client.publish(f"devices/{device}/telemetry", telemetry({"t": 21.5}), qos=1)
            status = await stream.until(lambda e: e.event == "status")
            reading = await stream.until(lambda e: e.event == "telemetry")
        assert stream.retry == 3000
        assert status.json["online"] is True
        assert reading.json["metrics"] == {"t": 21.5}
        assert reading.id is not None
        assert status.id is not None
        assert int(reading.id) > int(status.id)
        assert reading.json["id"] == int(reading.id)


async def test_filters(hub: Running, api: httpx.AsyncClient) -> None:
    a, b = unique_id("a"), unique_id("b")
    hub.hub.registry.add_device(b, labels={"site": "berlin"})
    by_device = open_stream(api, params={"devices": a, "types": "telemetry", "metrics": "t"})
    by_label = open_stream(api, params={"label": "site=berlin"})
    async with by_device as only_a, by_label as berlin:
        async with mqtt_client(hub, a) as dev_a, service_client(hub, "gw") as gw:
            await dev_a.publish(f"devices/{a}/status", b'{"online": true}', qos=1)
            await gw.publish(f"devices/{b}/telemetry", telemetry({"t": 2}), qos=1)
            await dev_a.publish(f"devices/{a}/telemetry", telemetry({"t": 1, "h": 50}), qos=1)
            first_a = await only_a.next()
            first_b = await berlin.next()
        assert (first_a.event, first_a.json["device_id"], first_a.json["metrics"]) == ("telemetry", a, {"t": 1})
        assert (first_b.event, first_b.json["device_id"]) == ("telemetry", b)


async def test_resume_replays_what_was_missed(hub: Running, api: httpx.AsyncClient, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        for n in range(3):
            await client.publish(f"devices/{device}/telemetry", telemetry({"n": n}, seq=n), qos=1)
        first = await events.until(lambda e: e.data.get("seq") == 0)
        await events.until(lambda e: e.data.get("seq") == 2)
        headers = {"Last-Event-ID": str(first.id)}
        async with open_stream(api, params={"devices": device}, headers=headers) as stream:
            replayed = [await stream.next(), await stream.next()]
            await client.publish(f"devices/{device}/telemetry", telemetry({"n": 3}, seq=3), qos=1)
            live = await stream.next()
        async with open_stream(api, params={"devices": device, "last_event_id": live.id}) as again:
            await client.publish(f"devices/{device}/telemetry", telemetry({"n": 4}, seq=4), qos=1)
            after_reconnect = await again.next()
    assert [e.json["seq"] for e in replayed] == [1, 2]
    assert live.json["seq"] == 3
    assert after_reconnect.json["seq"] == 4
    assert len({e.id for e in [*replayed, live]}) == 3


async def test_events_no_longer_stored_are_announced_as_a_gap(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", store={"event_retention": 1000})
    async with serve(settings) as running, http_client(running) as api:
        waiter = EventWaiter(running.hub.bus.subscribe("t", maxsize=5000))
        device = unique_id()
        async with mqtt_client(running, device) as client:
            for n in range(1200):
                await client.publish(f"devices/{device}/telemetry", telemetry({"n": n}, seq=n), qos=0)
            await waiter.until(lambda e: e.data.get("seq") == 1199, within=30)
        # Its disconnect is the last event written; it may prune the store once more, so read the
        # bounds only after it is committed.
        await waiter.status_of(device, online=False)
        oldest, _ = await running.hub.store.event_bounds()
        assert oldest > 1
        async with open_stream(api, params={"last_event_id": "0"}) as stream:
            gap = await stream.next()
            first = await stream.next()
    assert gap.event == "gap"
    assert gap.id is None  # never an id the client did not receive
    assert gap.json == {"missed": oldest - 1, "after_id": 0, "reason": "no longer stored"}
    assert int(first.id or 0) == oldest


@pytest.mark.parametrize(
    ("params", "headers", "status", "message"),
    [
        ({"types": "telemetry,weather"}, {}, 400, "parameter 'types': 'weather' is not one of"),
        ({"devices": "a b"}, {}, 400, "parameter 'devices'"),
        ({"label": "berlin"}, {}, 400, "parameter 'label'"),
        ({"metrics": "a b"}, {}, 400, "parameter 'metrics'"),
        ({}, {"Last-Event-ID": "abc"}, 400, "Last-Event-ID 'abc' is not an event id"),
        ({"last_event_id": "-5"}, {}, 400, "is not an event id"),
        ({}, {"Last-Event-ID": "999999"}, 400, "is ahead of the newest event"),
        ({"device": "a"}, {}, 400, "unknown parameter 'device' (did you mean 'devices'?)"),
        ({"type": "status"}, {}, 400, "unknown parameter 'type' (did you mean 'types'?)"),
    ],
)
async def test_bad_requests(
    api: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str], status: int, message: str
) -> None:
    response = await api.get("/api/v1/stream", params=params, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"]


async def test_tokens(hub: Running) -> None:
    async with httpx.AsyncClient(base_url=f"http://{hub.address('http')}", timeout=WAIT_S) as anonymous:
        assert (await anonymous.get("/api/v1/stream")).status_code == 401
        wrong = await anonymous.get("/api/v1/stream", params={"access_token": "iothub_nope"})
        assert wrong.status_code == 401
        async with anonymous.stream("GET", "/api/v1/stream", params={"access_token": hub.hub.first_token}) as ok:
            assert ok.status_code == 200


async def test_a_client_that_never_reads_disturbs_nobody(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", sse={"queue_size": 20, "max_dropped": 500, "send_timeout_s": 1})
    async with serve(settings) as running, http_client(running) as api:
        quiet, busy = unique_id("quiet"), unique_id("busy")
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", running.ports["http"]))
        request = f"GET /api/v1/stream?access_token={running.hub.first_token} HTTP/1.1\r\nHost: x\r\n\r\n"
        stuck.sendall(request.encode())  # ... and never reads
        try:
            async with open_stream(api, params={"devices": quiet, "types": "telemetry"}) as reader:
                async with mqtt_client(running, busy) as noisy, mqtt_client(running, quiet) as calm:
                    # ~8 MB: more than the kernel (4 MB at most here) and uvicorn buffer for the stuck client
                    padding = {f"pad{i}": "x" * 250 for i in range(10)}
                    for n in range(3000):
                        await noisy.publish(f"devices/{busy}/telemetry", telemetry({**padding, "n": n}), qos=0)
                    await calm.publish(f"devices/{quiet}/telemetry", telemetry({"t": 1}), qos=1)
                    event = await reader.next()
                assert event.json["metrics"] == {"t": 1}
            metrics = running.hub.metrics.render().decode()
            dropped = next(line for line in metrics.splitlines() if line.startswith("iothub_sse_dropped_total"))
            assert float(dropped.split()[1]) > 0
            kicked = next(line for line in metrics.splitlines() if line.startswith("iothub_sse_disconnected_slow"))
            assert float(kicked.split()[1]) == 1
        finally:
            stuck.close()


async def test_a_client_that_leaves_is_noticed(hub: Running, api: httpx.AsyncClient) -> None:
    async with open_stream(api) as stream:
        await asyncio.sleep(0)
        assert stream.response.status_code == 200
    metrics = ""
    for _ in range(100):  # bounded: 5 s
        metrics = (await api.get("/metrics")).text
        if "iothub_sse_clients 0.0" in metrics:
            break
        await asyncio.sleep(0.05)
    assert "iothub_sse_clients 0.0" in metrics


async def test_streams_end_cleanly_when_the_hub_stops(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data")
    running_ctx = serve(settings)
    running = await running_ctx.__aenter__()
    api = http_client(running)
    stopped = False
    try:
        async with open_stream(api) as stream:
            stop = asyncio.create_task(running_ctx.__aexit__(None, None, None))
            stopped = True
            with pytest.raises(EOFError):
                await drain(stream)
            async with asyncio.timeout(10):
                await stop
    finally:
        await api.aclose()
        if not stopped:
            await running_ctx.__aexit__(None, None, None)


async def test_a_stream_asked_for_while_the_hub_stops_gets_503(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data")
    async with Hub(settings) as hub:
        hub.make_first_token()
        app = create_app(hub)
        async with HttpServer(app, settings.http) as server:
            app.state.sse.close()  # what leaving HttpServer does first
            base = f"http://127.0.0.1:{server.port}"
            headers = {"Authorization": f"Bearer {hub.first_token}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=WAIT_S) as api:
                response = await api.get("/api/v1/stream")
    assert (response.status_code, response.json()) == (503, {"error": "the hub is shutting down"})


async def test_heartbeats_keep_an_idle_stream_alive(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", sse={"heartbeat_s": 0.2})
    async with serve(settings) as running, http_client(running) as api, open_stream(api) as stream:
        await stream.heartbeats(2)  # and nothing else
        _ = json


async def _read_while_publishing(client: aiomqtt.Client, device: str, stream: SseStream) -> None:
    """Publish and read one event at a time until the stream ends (bounded in count and time)."""
    async with asyncio.timeout(WAIT_S):
        for n in range(10_000):
            await client.publish(f"devices/{device}/telemetry", telemetry({"t": n}), qos=1)
            await stream.next(within=WAIT_S)


async def test_revoking_its_token_ends_an_open_stream(hub: Running) -> None:
    """A revoked token stops working for new requests at once, and for a stream already open too."""
    record, token = hub.hub.registry.create_token(TokenScope.READ, "to-revoke")
    device = unique_id()
    async with http_client(hub, token) as api, open_stream(api, params={"devices": device}) as stream:
        async with mqtt_client(hub, device) as client:
            await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1)
            await stream.until(lambda e: e.event == "telemetry")
            hub.hub.registry.revoke_token(record.id)
            with pytest.raises((EOFError, httpx.RemoteProtocolError)):  # the hub ends it (within a second)
                await _read_while_publishing(client, device, stream)
        again = await api.get("/api/v1/stream")
    assert again.status_code == 401
