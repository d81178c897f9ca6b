"""Several real ``iothub run`` processes on one Mosquitto and one data dir: they split ingest through
a shared subscription with nothing lost and nothing stored twice, agree on event ids so that an SSE
client switching between them resumes exactly, and a restarted hub loses nothing devices published
with QoS 1 meanwhile."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiomqtt
import httpx
import pytest

from tests.bridge.sse_client import SseStream
from tests.conformance.brokers import mosquitto
from tests.conftest import WAIT_S, telemetry, unique_id
from tests.external_hubs import admin_token, hub_process, stored_telemetry

pytestmark = pytest.mark.e2e
BROKER_CONFIG = "max_queued_messages 100000\nmax_inflight_messages 100\n"


async def publish_all(port: int, devices: list[str], count: int, pause_s: float = 0.0) -> None:
    """``count`` QoS 1 telemetry messages per device, seq 0..count-1, acknowledged by the broker."""
    async with asyncio.timeout(WAIT_S * 6), asyncio.TaskGroup() as tasks:
        for device in devices:
            tasks.create_task(_publish(port, device, count, pause_s))


async def _publish(port: int, device: str, count: int, pause_s: float) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=device, timeout=WAIT_S) as client:
        for seq in range(count):
            await client.publish(f"devices/{device}/telemetry", telemetry({"n": seq}, seq=seq), qos=1)
            if pause_s:
                await asyncio.sleep(pause_s)  # pacing the load, not synchronising


async def wait_stored(db: Path, devices: list[str], at_least: int, within: float = WAIT_S * 3) -> list[tuple[str, int]]:
    """The stored ``(device, seq)`` once there are ``at_least``; the assertion shows what was missing."""
    stored: list[tuple[str, int]] = []
    try:
        async with asyncio.timeout(within):
            while len(stored) < at_least:
                await asyncio.sleep(0.1)  # polling another process's database
                stored = await asyncio.to_thread(stored_telemetry, db, devices)
    except TimeoutError:
        raise AssertionError(f"{len(stored)} of {at_least} stored; the first: {sorted(stored)[:5]}") from None
    return stored


def stored_by(metrics_text: str) -> float:
    found = re.search(r"^iothub_messages_stored_total (\S+)$", metrics_text, re.MULTILINE)
    assert found, "no iothub_messages_stored_total"
    return float(found[1])


async def test_two_hubs_split_ingest_and_a_client_switching_between_them_resumes_exactly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    token = admin_token(data)
    auth = {"Authorization": f"Bearer {token}"}
    devices = [unique_id("split") for _ in range(4)]
    count = 250
    sent = {(d, n) for d in devices for n in range(count)}
    async with (
        mosquitto(tmp_path / "broker", extra=BROKER_CONFIG) as port,
        hub_process(data, port, "hub-a", "ingest,alerts,webhooks,http,sse,ws") as a,
        hub_process(data, port, "hub-b", "ingest,http,sse,ws") as b,
        httpx.AsyncClient(headers=auth, timeout=WAIT_S) as http,
    ):
        received: list[tuple[int, str, int]] = []  # (event id, device, seq) as the client saw them
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publish_all(port, devices, count, pause_s=0.002))
            params = {"types": "telemetry", "devices": ",".join(devices)}
            # From the log's start: the devices publish already, and a live-only stream would begin
            # with whatever is committed once it is attached.
            async with (
                asyncio.timeout(WAIT_S * 6),
                http.stream(
                    "GET", f"{a.http}/api/v1/stream", params=params, headers={"Last-Event-ID": "0"}
                ) as response,
            ):
                stream = SseStream(response)
                while len(received) < len(sent) // 2:
                    event = await stream.next()
                    assert event.id is not None
                    received.append((int(event.id), event.json["device_id"], event.json["seq"]))
            # Reconnect to the other process (no sticky sessions) with the last id seen.
            switched_at = len(received)
            headers = {"Last-Event-ID": str(received[-1][0])}
            async with (
                asyncio.timeout(WAIT_S * 6),
                http.stream("GET", f"{b.http}/api/v1/stream", params=params, headers=headers) as response,
            ):
                stream = SseStream(response)
                while len(received) < len(sent):
                    try:
                        event = await stream.next()
                    except TimeoutError:
                        ids = [i for i, _, _ in received]
                        metrics = (await http.get(f"{b.http}/metrics")).text
                        counters = [line for line in metrics.splitlines() if line.startswith("iothub_stream_")]
                        missing = sorted(set(range(1, max(ids) + 1)) - set(ids))
                        backwards = [(n, ids[n - 1], ids[n]) for n in range(1, len(ids)) if ids[n] < ids[n - 1]]
                        raise AssertionError(
                            f"hub B stopped sending: {len(received)} of {len(sent)} received, switched after"
                            f" {switched_at} at id {ids[switched_at - 1]}, last ids {ids[-5:]}; missing {missing},"
                            f" out of order {backwards}; {counters}"
                        ) from None
                    assert event.id is not None
                    received.append((int(event.id), event.json["device_id"], event.json["seq"]))
        ids = [i for i, _, _ in received]
        assert ids == sorted(set(ids)), "an event repeated or out of order across the switch"
        assert {(d, s) for _, d, s in received} == sent, "an event missed across the switch"
        stored = await wait_stored(data / "iothub.db", devices, len(sent))
        assert sorted(stored) == sorted(sent), "stored twice or lost"
        by_a = stored_by((await http.get(f"{a.http}/metrics")).text)
        by_b = stored_by((await http.get(f"{b.http}/metrics")).text)
        assert min(by_a, by_b) > 0, f"the shared subscription did not split ingest: {by_a} and {by_b}"
        assert by_a + by_b == len(sent)
        assert await a.stop() == 0
        assert await b.stop() == 0


async def test_a_hub_restarted_while_devices_publish_qos1_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    admin_token(data)
    devices = [unique_id("restart") for _ in range(2)]
    count = 400
    db = data / "iothub.db"
    async with mosquitto(tmp_path / "broker", extra=BROKER_CONFIG) as port, asyncio.TaskGroup() as tasks:
        async with hub_process(data, port, "hub-r") as first:  # its session (subscriptions) exists from now on
            publishing = tasks.create_task(publish_all(port, devices, count, pause_s=0.005))
            await wait_stored(db, devices, 100)
            assert await first.stop() == 0
        assert not publishing.done(), "the devices stopped before the hub did: nothing was tested"
        # Devices keep publishing while no hub runs: the broker keeps it for the hub's session.
        await wait_until_published_more(port, devices)
        async with hub_process(data, port, "hub-r") as second:
            await publishing
            stored = await wait_stored(db, devices, len(devices) * count)
            assert await second.stop() == 0
    assert sorted(stored) == sorted((d, n) for d in devices for n in range(count))


async def wait_until_published_more(port: int, devices: list[str]) -> None:
    """Until a device publishes while the hub is away (seen by a plain subscriber)."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=unique_id("watch"), timeout=WAIT_S) as watcher:
        await watcher.subscribe(f"devices/{devices[0]}/telemetry", qos=0)
        async with asyncio.timeout(WAIT_S):
            async for _ in watcher.messages:
                return
