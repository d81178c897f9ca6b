"""MQTT 3.1.1 rules the hub's broker keeps where plain amqtt 0.12.1 does not."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiomqtt

from iothub.hub.registry import Role
from iothub.runner import Running
from tests.conftest import WAIT_S, EventWaiter, device_secret, mqtt_client, service_client, telemetry, unique_id
from tests.mqtt_raw import connect_packet


async def test_a_silent_client_is_closed_after_one_and_a_half_keepalives(hub: Running, events: EventWaiter) -> None:
    """[MQTT-3.1.2-24]: plain amqtt never closes it and never sends its Will."""
    device = unique_id()
    secret = device_secret(hub, device)
    async with mqtt_client(hub, device) as client:  # make the device known to presence
        await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1)
        await events.telemetry_from(device)
    await events.status_of(device, online=False)
    keepalive = 1
    will = (f"devices/{device}/status", b'{"online": false, "reason": "gone quiet"}')
    async with service_client(hub, unique_id("will-watch"), Role.OBSERVER) as watcher:
        await watcher.subscribe(will[0], qos=1)
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.ports["mqtt"])
        connected_at = time.monotonic()  # before the CONNECT: the server's clock for silence starts later
        writer.write(connect_packet(device, username=device, password=secret, will=will, keepalive=keepalive))
        try:
            async with asyncio.timeout(WAIT_S):
                assert (await reader.readexactly(4))[3] == 0
            online = await events.status_of(device, online=True)
            async with asyncio.timeout(WAIT_S):  # however late under load, so long as it is closed
                assert await reader.read() == b""  # the broker closed the connection
            closed_after = time.monotonic() - connected_at
            async with asyncio.timeout(WAIT_S):  # ... and published its Will
                sent = await anext(aiter(watcher.messages))
        finally:
            writer.close()
    offline = await events.status_of(device, online=False)
    assert (str(sent.topic), sent.payload) == will
    assert closed_after >= 1.5 * keepalive - 0.05, closed_after  # not before 1.5x the keepalive
    assert offline.data["reason"] == "keepalive_timeout"
    assert online.data["reason"] == "connected"


async def test_a_second_connection_takes_over_the_first(hub: Running, events: EventWaiter) -> None:
    """[MQTT-3.1.4-2]: plain amqtt leaves the first connection open (clean session)."""
    device = unique_id()
    first = mqtt_client(hub, device)
    await first.__aenter__()
    await first.publish(f"devices/{device}/status", b'{"online": true}', qos=1)
    await events.status_of(device, online=True)
    async with mqtt_client(hub, device) as second:
        taken = await events.status_of(device, online=False)
        back = await events.status_of(device, online=True)
        await second.publish(f"devices/{device}/telemetry", telemetry({"t": 2}), qos=1)
        await events.telemetry_from(device)
    assert taken.data["reason"] == "taken_over"
    assert back.data["reason"] == "connected"
    with contextlib.suppress(aiomqtt.MqttError):  # the first connection is gone; aiomqtt may say so
        await first.__aexit__(None, None, None)


async def test_a_refused_client_cannot_take_over_a_device(hub: Running, events: EventWaiter) -> None:
    """amqtt deletes the old session before authenticating: anyone knowing an id could cut a device off."""
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        await client.subscribe(f"devices/{device}/commands/+", qos=1)
        await client.publish(f"devices/{device}/status", b'{"online": true}', qos=1)
        await events.status_of(device, online=True)
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.ports["mqtt"])
        writer.write(connect_packet(device, username=device, password="guess"))
        assert (await reader.readexactly(4))[3] == 0x04
        writer.close()
        result = asyncio.create_task(hub.hub.commands.send(device, "ping", {}, timeout_s=WAIT_S))
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(client.messages))  # still subscribed, still connected
        assert str(message.topic) == f"devices/{device}/commands/ping"
        result.cancel()
