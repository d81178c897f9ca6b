"""The embedded broker as clients see it."""

from __future__ import annotations

import asyncio
import json
import os
import time

from iothub.runner import Running
from tests.conftest import WAIT_S, EventWaiter, mqtt_client, service_client, telemetry, unique_id
from tests.mqtt_raw import connect_packet


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_connections_that_never_connect_are_closed(hub: Running, events: EventWaiter) -> None:
    before = open_fds()
    for payload in (b"", b"\x00\x01garbage", b"GET / HTTP/1.1\r\n\r\n"):
        _, writer = await asyncio.open_connection("127.0.0.1", hub.ports["mqtt"])
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    deadline = time.monotonic() + WAIT_S
    while open_fds() > before:  # the broker closes its side once it sees the bad start
        assert time.monotonic() < deadline, f"{open_fds() - before} sockets left open"
        await asyncio.sleep(0.05)
    device = unique_id()
    async with mqtt_client(hub, device) as client:  # and keeps serving
        await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1)
        await events.telemetry_from(device)


async def test_hub_status_is_retained(hub: Running) -> None:
    async with service_client(hub, "watcher") as client:
        await client.subscribe("hub/status", qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(client.messages))
    assert message.retain
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload)["online"] is True


async def test_mqtt_over_websocket(hub: Running, events: EventWaiter) -> None:
    device = unique_id("ws")
    async with mqtt_client(hub, device, port="mqtt_ws", transport="websockets") as client:
        await client.publish(f"devices/{device}/telemetry", telemetry({"t": 3}), qos=1)
        event = await events.telemetry_from(device)
    assert event.data["metrics"] == {"t": 3}


async def test_qos2_telemetry_is_stored_once(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        for seq in range(3):
            await client.publish(f"devices/{device}/telemetry", telemetry({"n": seq}, seq=seq), qos=2)
        await events.until(lambda e: e.device_id == device and e.data.get("seq") == 2)
    state = hub.hub.fleet.get(device)
    assert state is not None
    assert state.messages == 3


async def test_retained_messages_go_only_to_matching_new_subscriptions(hub: Running) -> None:
    """[MQTT-3.3.1-6]: plain amqtt sends a connecting client retained messages for others' filters."""
    device = unique_id()
    async with service_client(hub, "status-watcher") as watcher, mqtt_client(hub, device) as publisher:
        await watcher.subscribe("devices/+/status", qos=1)
        await publisher.publish(f"devices/{device}/status", b'{"online": true}', qos=1, retain=True)
        async with asyncio.timeout(WAIT_S):
            await anext(aiter(watcher.messages))
        async with service_client(hub, "bystander") as bystander:
            await bystander.subscribe("probe/bystander", qos=1)
            await bystander.publish("probe/bystander", b"probe", qos=1)
            async with asyncio.timeout(WAIT_S):
                first = await anext(aiter(bystander.messages))
            assert str(first.topic) == "probe/bystander"  # nothing retained came before it
            await bystander.subscribe(f"devices/{device}/+", qos=0)
            async with asyncio.timeout(WAIT_S):
                retained = await anext(aiter(bystander.messages))
            assert str(retained.topic) == f"devices/{device}/status"
            assert (retained.retain, retained.qos) == (True, 0)


async def test_an_mqtt_3_1_client_is_told_its_version_is_not_served(hub: Running) -> None:
    """[MQTT-3.1.2-2] CONNACK 0x01, then the connection closes (plain amqtt closes it without a word)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.ports["mqtt"])
    writer.write(connect_packet("legacy-1", protocol="MQIsdp", level=3))
    async with asyncio.timeout(WAIT_S):
        assert await reader.readexactly(4) == b"\x20\x02\x00\x01"
        assert await reader.read() == b""
    writer.close()
    assert 'iothub_mqtt_connects_total{result="0x01"} 1.0' in hub.hub.metrics.render().decode()
