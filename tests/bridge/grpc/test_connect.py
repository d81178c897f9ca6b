"""HubService.Connect: the live protocol on one bidirectional gRPC stream, against a running hub."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from iothub.bridge.live import CommandStatus, ErrorCode
from iothub.hub.registry import Scope
from iothub.runner import Running, serve
from iothub.v1 import events_pb2, hub_pb2, hub_pb2_grpc
from tests.bridge.grpc.conftest import Metadata, bearer, token_of
from tests.conftest import WAIT_S, EventWaiter, hub_settings, mqtt_client, telemetry, unique_id
from tests.hub.test_commands import answering_device

Call = grpc.aio.StreamStreamCall[hub_pb2.ClientMessage, hub_pb2.ServerMessage]


def connect(channel: grpc.aio.Channel, metadata: Metadata) -> Call:
    return hub_pb2_grpc.HubServiceStub(channel).Connect(metadata=metadata)


async def until(call: Call, match: Callable[[hub_pb2.ServerMessage], bool]) -> hub_pb2.ServerMessage:
    async with asyncio.timeout(WAIT_S):
        while True:
            message = await call.read()
            assert isinstance(message, hub_pb2.ServerMessage), f"the stream ended: {message!r}"
            if match(message):
                return message


def kind(name: str) -> Callable[[hub_pb2.ServerMessage], bool]:
    return lambda m: m.WhichOneof("kind") == name


def subscribe(sub_id: str, resume_from: int | None = None, **filters: list[str]) -> hub_pb2.ClientMessage:
    message = hub_pb2.SubscribeMessage(id=sub_id, filter=events_pb2.StreamFilter(**filters), resume_from=resume_from)
    return hub_pb2.ClientMessage(subscribe=message)


async def test_two_subscriptions_and_a_command_on_one_stream(
    hub: Running, channel: grpc.aio.Channel, admin: Metadata, events: EventWaiter
) -> None:
    a, b = unique_id("a"), unique_id("b")
    call = connect(channel, admin)
    await call.write(subscribe("temps", devices=[a], types=["telemetry"], metrics=["t"]))
    await call.write(subscribe("presence", devices=[b], types=["status"]))
    subscribed = {(await until(call, kind("subscribed"))).subscribed.subscription for _ in range(2)}
    assert subscribed == {"temps", "presence"}
    got: dict[str, list[hub_pb2.ServerMessage]] = {"temps": [], "presence": [], "command": []}
    async with mqtt_client(hub, a) as dev_a, answering_device(hub, events, b):
        await dev_a.publish(f"devices/{a}/telemetry", telemetry({"t": 21.5, "h": 40}), qos=1)
        args = Struct()
        args.update({"times": 2})
        command = hub_pb2.CommandMessage(ref="c1", device=b, name="blink", args=args)
        await call.write(hub_pb2.ClientMessage(command=command))
        while not (got["temps"] and got["presence"] and got["command"]):
            message = await until(call, lambda m: m.WhichOneof("kind") in ("events", "command_result"))
            got[message.events.subscription if message.HasField("events") else "command"].append(message)
    await call.done_writing()
    async with asyncio.timeout(WAIT_S):  # what is still on its way, then the end of the stream
        while await call.read() is not grpc.aio.EOF:
            pass
    (temps,) = got["temps"][0].events.events
    (presence,) = got["presence"][0].events.events
    result = got["command"][0].command_result
    assert (temps.device_id, dict(temps.telemetry.metrics)) == (a, {"t": events_pb2.Value(number=21.5)})
    assert (presence.device_id, presence.status.online) == (b, True)
    assert (result.ref, result.status, result.device, result.name) == ("c1", "ok", b, "blink")
    assert dict(result.result) == {"echo": {"times": 2.0}}
    assert result.id
    assert await call.code() == grpc.StatusCode.OK  # the client half-closed: the stream ends cleanly


async def test_a_half_close_ends_the_subscriptions_and_still_delivers_command_results(
    hub: Running, channel: grpc.aio.Channel, admin: Metadata, events: EventWaiter
) -> None:
    device = unique_id("late")
    registry = hub.hub.metrics.registry

    def consumers() -> float | None:
        return registry.get_sample_value("iothub_stream_clients", {"channel": "grpc"})

    async with answering_device(hub, events, device, answer=False) as client:
        call = connect(channel, admin)
        await call.write(subscribe("mine", devices=[device]))
        await until(call, kind("subscribed"))
        command = hub_pb2.CommandMessage(ref="c1", device=device, name="blink", timeout_s=WAIT_S)
        await call.write(hub_pb2.ClientMessage(command=command))
        async with asyncio.timeout(WAIT_S):  # the device has the command ...
            request = json.loads(bytes((await anext(client.messages)).payload))
        await call.done_writing()  # ... and the client is done sending
        for _ in range(100):  # bounded: 5 s for the subscription to end
            if consumers() == 0:
                break
            await asyncio.sleep(0.05)
        assert consumers() == 0
        reply = {"id": request["id"], "ok": True, "result": {"late": True}}
        await client.publish(f"devices/{device}/responses", json.dumps(reply), qos=1)
        result = (await until(call, kind("command_result"))).command_result
    assert (result.ref, result.status, dict(result.result)) == ("c1", "ok", {"late": True})
    async with asyncio.timeout(WAIT_S):
        assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_refused_messages_get_the_protocols_error_codes(channel: grpc.aio.Channel, admin: Metadata) -> None:
    call = connect(channel, admin)
    await call.write(subscribe("s1"))
    await until(call, kind("subscribed"))
    cases = [
        (subscribe("s1"), ErrorCode.DUPLICATE_SUBSCRIPTION, "subscription 's1' exists"),
        (subscribe("s2", types=["weather"]), ErrorCode.BAD_FILTER, "field 'types': 'weather' is not one of"),
        (subscribe("s3", resume_from=10**9), ErrorCode.BAD_RESUME, "is ahead of the newest event"),
        (subscribe(""), ErrorCode.BAD_MESSAGE, "field 'id'"),
        (hub_pb2.ClientMessage(unsubscribe=hub_pb2.UnsubscribeMessage(id="nope")), ErrorCode.UNKNOWN_SUBSCRIPTION,
         "no subscription 'nope'"),
        (hub_pb2.ClientMessage(), ErrorCode.UNKNOWN_TYPE,
         "ClientMessage sets none of its kinds: subscribe, unsubscribe, command, ping"),
    ]  # fmt: skip
    for message, code, text in cases:
        await call.write(message)
        error = (await until(call, kind("error"))).error
        assert (error.code, text in error.message) == (code.value, True), error
    ping = hub_pb2.PingMessage()
    ping.data.string_value = "hello"
    await call.write(hub_pb2.ClientMessage(ping=ping))
    assert (await until(call, kind("pong"))).pong.data.string_value == "hello"
    await call.write(hub_pb2.ClientMessage(unsubscribe=hub_pb2.UnsubscribeMessage(id="s1")))
    assert (await until(call, kind("unsubscribed"))).unsubscribed.subscription == "s1"
    offline = hub_pb2.CommandMessage(ref="c", device="ghost", name="x")
    await call.write(hub_pb2.ClientMessage(command=offline))
    result = (await until(call, kind("command_result"))).command_result
    assert (result.status, result.error) == (CommandStatus.UNKNOWN_DEVICE.value, "no device 'ghost'")
    call.cancel()


async def test_a_command_without_the_command_scope_ends_the_stream(hub: Running, channel: grpc.aio.Channel) -> None:
    call = connect(channel, token_of(hub, Scope.READ))
    await call.write(hub_pb2.ClientMessage(command=hub_pb2.CommandMessage(ref="c", device="x", name="x")))
    assert await call.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "commands need 'command'" in await call.details()


async def test_without_a_token_connect_is_refused(channel: grpc.aio.Channel) -> None:
    call = connect(channel, bearer("iothub_nope"))
    assert await call.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_hub_stopping_ends_connect_with_unavailable(tmp_path: Path) -> None:
    async with serve(hub_settings(tmp_path / "data")) as running:
        channel = grpc.aio.insecure_channel(running.address("grpc"))
        idle = connect(channel, bearer(running.hub.first_token))
        await idle.write(hub_pb2.ClientMessage(ping=hub_pb2.PingMessage()))
        await until(idle, kind("pong"))
    try:
        async with asyncio.timeout(WAIT_S):
            assert await idle.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in await idle.details()
    finally:
        await channel.close()


@pytest.mark.parametrize("scope", [Scope.READ])
async def test_a_revoked_token_ends_connect(hub: Running, channel: grpc.aio.Channel, scope: Scope) -> None:
    record, secret = hub.hub.registry.create_token(scope, "revoke-me")
    call = connect(channel, bearer(secret))
    await call.write(hub_pb2.ClientMessage(ping=hub_pb2.PingMessage()))
    await until(call, kind("pong"))
    hub.hub.registry.revoke_token(record.id)
    async with asyncio.timeout(WAIT_S):  # the watchdog looks once a second
        assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "has been revoked" in await call.details()
