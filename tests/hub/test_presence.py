"""Presence starts at CONNECT: a device that connects and only subscribes (never publishes) is online,
reachable by commands, and goes offline for the right reason. Service accounts are not devices."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import httpx

from iothub.hub.registry import Role
from iothub.runner import Running, serve
from tests.conftest import (
    WAIT_S,
    EventWaiter,
    device_secret,
    hub_settings,
    mqtt_client,
    service_client,
    telemetry,
    unique_id,
)
from tests.mqtt_raw import connect_packet, read_packet, subscribe_packet


async def _listener(hub: Running, device: str) -> aiomqtt.Client:
    """A device that connects and subscribes to its commands, and publishes nothing."""
    client = mqtt_client(hub, device)
    await client.__aenter__()
    await client.subscribe(f"devices/{device}/commands/+", qos=1)
    return client


async def test_a_device_that_only_subscribes_is_online(
    hub: Running, events: EventWaiter, http: httpx.AsyncClient
) -> None:
    device = unique_id("listener")
    client = await _listener(hub, device)
    try:
        await events.status_of(device, online=True)
        view = (await http.get(f"/api/v1/devices/{device}")).json()
        assert (view["online"], view["reason"], view["registered"]) == (True, "connected", True)
    finally:
        await client.__aexit__(None, None, None)


async def test_a_command_reaches_a_device_that_only_subscribed(
    hub: Running, events: EventWaiter, http: httpx.AsyncClient
) -> None:
    device = unique_id("listener")
    client = await _listener(hub, device)
    try:
        await events.status_of(device, online=True)

        async def answer() -> None:
            message = await anext(aiter(client.messages))
            assert isinstance(message.payload, bytes)
            request = json.loads(message.payload)
            reply = {"id": request["id"], "ok": True, "result": {"pong": request["args"]}}
            await client.publish(f"devices/{device}/responses", json.dumps(reply), qos=1)

        answering = asyncio.create_task(answer())
        response = await http.post(f"/api/v1/devices/{device}/commands/ping", json={"args": {"n": 1}, "timeout": 5})
        async with asyncio.timeout(WAIT_S):
            await answering
        assert response.status_code == 200, response.text
        assert (response.json()["ok"], response.json()["result"]) == (True, {"pong": {"n": 1}})
    finally:
        await client.__aexit__(None, None, None)


async def test_a_clean_disconnect_of_a_device_that_only_subscribed(hub: Running, events: EventWaiter) -> None:
    device = unique_id("listener")
    client = await _listener(hub, device)
    await events.status_of(device, online=True)
    await client.__aexit__(None, None, None)  # DISCONNECT
    offline = await events.status_of(device, online=False)
    assert offline.data["reason"] == "clean_disconnect"


async def test_an_abrupt_close_fires_the_will_and_presence_says_last_will(hub: Running, events: EventWaiter) -> None:
    """The Will's own text ("online": false) does not turn the reason into reported_offline."""
    device = unique_id("listener")
    secret = device_secret(hub, device)
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.ports["mqtt"])
    will = (f"devices/{device}/status", b'{"online": false, "reason": "power cut"}')
    writer.write(connect_packet(device, username=device, password=secret, will=will))
    writer.write(subscribe_packet(1, f"devices/{device}/commands/+", 1))
    assert (await read_packet(reader)).body[1] == 0  # CONNACK accepted
    assert (await read_packet(reader)).kind == 9  # SUBACK
    await events.status_of(device, online=True)
    writer.transport.abort()  # as a killed process leaves it: no DISCONNECT
    offline = await events.status_of(device, online=False)
    assert offline.data["reason"] == "last_will"


async def test_service_accounts_never_join_the_fleet(
    hub: Running, events: EventWaiter, http: httpx.AsyncClient
) -> None:
    device = unique_id()
    async with service_client(hub, "presence-watch", Role.OBSERVER) as watcher:
        await watcher.subscribe("devices/#", qos=1)
        async with mqtt_client(hub, device) as client:  # connection events are applied in order
            await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1)
            await events.telemetry_from(device)
    listing = (await http.get("/api/v1/devices")).json()
    assert [d["id"] for d in listing["devices"]] == [device]
    assert (await http.get("/api/v1/devices/svc-presence-watch")).status_code == 404


async def test_an_anonymous_client_in_development_mode_has_presence_under_a_device_id(tmp_path: Path) -> None:
    """With anonymous access on, a client using a registered device's id is that device's presence; any
    other anonymous client (a `mosquitto_sub -t '#'`, a tool with a generated id) is not a device."""
    async with serve(hub_settings(tmp_path / "data", mqtt={"allow_anonymous": True})) as running:
        running.hub.registry.add_device("bench-7")
        events = EventWaiter(running.hub.bus.subscribe("t"))
        port = running.ports["mqtt"]
        async with aiomqtt.Client("127.0.0.1", port, identifier="mosq-tool", timeout=WAIT_S) as tool:
            async with aiomqtt.Client("127.0.0.1", port, identifier="bench-7", timeout=WAIT_S):
                online = await events.status_of("bench-7", online=True)
            offline = await events.status_of("bench-7", online=False)
            async with aiomqtt.Client("127.0.0.1", port, timeout=WAIT_S):  # the server assigns its id
                pass
            await tool.publish("probe/presence", b"", qos=1)
            async with aiomqtt.Client("127.0.0.1", port, identifier="bench-7", timeout=WAIT_S):
                await events.status_of("bench-7", online=True)  # ingest has applied what came before
            assert set(running.hub.fleet.devices) == {"bench-7"}
    assert (online.data["reason"], offline.data["reason"]) == ("connected", "clean_disconnect")
