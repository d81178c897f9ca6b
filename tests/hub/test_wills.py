"""Last Wills are delivered, not only remembered: what another client receives when a device goes."""

from __future__ import annotations

import asyncio

import aiomqtt

from iothub.hub.registry import Role
from iothub.runner import Running
from tests.conftest import WAIT_S, EventWaiter, device_secret, service_client, unique_id
from tests.mqtt_raw import connect_packet, raw_connect


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT_S):
        return await anext(aiter(client.messages))


def will_of(device: str) -> tuple[str, bytes]:
    return f"devices/{device}/status", b'{"online": false, "reason": "power lost"}'


async def test_a_dropped_connection_publishes_the_will(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with service_client(hub, "will-watch", Role.OBSERVER) as watcher:
        await watcher.subscribe(f"devices/{device}/status", qos=1)
        _, writer, ack = await raw_connect(
            hub.ports["mqtt"], device, username=device, password=device_secret(hub, device), will=will_of(device)
        )
        try:
            assert ack.body[1] == 0
            await events.status_of(device, online=True)  # online from CONNECT, before any publish
        finally:
            writer.transport.abort()  # gone without DISCONNECT
        will = await next_message(watcher)
    assert (str(will.topic), will.payload) == will_of(device)
    offline = await events.status_of(device, online=False)
    assert offline.data["reason"] == "last_will"


async def test_a_keepalive_timeout_publishes_the_will(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with service_client(hub, "will-watch-ka", Role.OBSERVER) as watcher:
        await watcher.subscribe(f"devices/{device}/status", qos=1)
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.ports["mqtt"])
        secret = device_secret(hub, device)
        writer.write(connect_packet(device, username=device, password=secret, will=will_of(device), keepalive=1))
        try:
            assert (await reader.readexactly(4))[3] == 0
            will = await next_message(watcher)  # sent when the hub closes the silent client
        finally:
            writer.close()
    assert (str(will.topic), will.payload) == will_of(device)
    offline = await events.status_of(device, online=False)
    assert offline.data["reason"] == "keepalive_timeout"


async def test_a_clean_disconnect_sends_no_will(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with service_client(hub, "will-watch-clean", Role.OBSERVER) as watcher:
        await watcher.subscribe(f"devices/{device}/status", qos=1)
        await watcher.subscribe("probe/wills", qos=1)
        _, writer, _ = await raw_connect(
            hub.ports["mqtt"], device, username=device, password=device_secret(hub, device), will=will_of(device)
        )
        try:
            await events.status_of(device, online=True)
            writer.write(bytes([0xE0, 0]))  # DISCONNECT: the Will is discarded [MQTT-3.14.4-3]
            await writer.drain()
        finally:
            writer.close()
        offline = await events.status_of(device, online=False)
        async with service_client(hub, "will-prober") as prober:
            await prober.publish("probe/wills", b"probe", qos=1)
        first = await next_message(watcher)
    assert str(first.topic) == "probe/wills", f"got {first.topic} {first.payload!r} after a clean disconnect"
    assert offline.data["reason"] == "clean_disconnect"
