"""CommandService.SendCommand over a real grpc.aio channel, to a real device on MQTT; and auth."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from iothub.hub.registry import Scope
from iothub.runner import Running
from iothub.v1 import commands_pb2, commands_pb2_grpc, devices_pb2, devices_pb2_grpc
from tests.bridge.grpc.conftest import Metadata, bearer, token_of
from tests.conftest import EventWaiter, unique_id
from tests.hub.test_commands import answering_device


def stub(channel: grpc.aio.Channel) -> commands_pb2_grpc.CommandServiceAsyncStub:
    return commands_pb2_grpc.CommandServiceStub(channel)


def args(**values: int) -> Struct:
    out = Struct()
    out.update(values)
    return out


async def test_a_command_round_trip(hub: Running, channel: grpc.aio.Channel, events: EventWaiter) -> None:
    device = unique_id()
    command = token_of(hub, Scope.COMMAND)
    async with answering_device(hub, events, device):
        result = await stub(channel).SendCommand(
            commands_pb2.SendCommandRequest(device_id=device, name="blink", args=args(times=3)), metadata=command
        )
    assert (result.ok, result.device_id, result.name) == (True, device, "blink")
    assert dict(result.result) == {"echo": {"times": 3.0}}
    assert result.id
    assert not result.HasField("error")


async def test_a_silent_device_gives_deadline_exceeded_within_the_calls_deadline(
    hub: Running, channel: grpc.aio.Channel, admin: Metadata, events: EventWaiter
) -> None:
    device = unique_id()
    async with answering_device(hub, events, device, answer=False):
        request = commands_pb2.SendCommandRequest(device_id=device, name="x", timeout_s=30)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub(channel).SendCommand(request, metadata=admin, timeout=1.0)
        request.timeout_s = 0.3
        with pytest.raises(grpc.aio.AioRpcError) as shorter:
            await stub(channel).SendCommand(request, metadata=admin, timeout=10)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The hub's own answer, just before the client's deadline: it says which device and how long.
    assert f"device '{device}' did not answer 'x' within the call's deadline" in (late.value.details() or "")
    assert shorter.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"device '{device}' did not answer 'x' within 0.3 s" in (shorter.value.details() or "")


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (commands_pb2.SendCommandRequest(device_id="ghost", name="x"), grpc.StatusCode.NOT_FOUND, "no device 'ghost'"),
        (commands_pb2.SendCommandRequest(device_id="OFFLINE", name="x"), grpc.StatusCode.UNAVAILABLE, "is offline"),
        (commands_pb2.SendCommandRequest(device_id="OFFLINE", name="a/b"), grpc.StatusCode.INVALID_ARGUMENT,
         "command name 'a/b' breaks the rule"),
        (commands_pb2.SendCommandRequest(device_id="OFFLINE", name="x", timeout_s=0), grpc.StatusCode.INVALID_ARGUMENT,
         "field 'timeout_s': 0 s is outside (0, 300]"),
        (commands_pb2.SendCommandRequest(device_id="a b", name="x"), grpc.StatusCode.INVALID_ARGUMENT,
         "field 'device_id': 'a b' breaks the device id rule"),
    ],
)  # fmt: skip
async def test_command_errors(
    hub: Running,
    channel: grpc.aio.Channel,
    admin: Metadata,
    request_: commands_pb2.SendCommandRequest,
    code: grpc.StatusCode,
    message: str,
) -> None:
    if request_.device_id == "OFFLINE":
        request_.device_id = unique_id("offline")
        hub.hub.registry.add_device(request_.device_id)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub(channel).SendCommand(request_, metadata=admin)
    assert failed.value.code() == code
    assert message in (failed.value.details() or "")


async def test_tokens(hub: Running, channel: grpc.aio.Channel) -> None:
    devices = devices_pb2_grpc.DeviceServiceStub(channel)
    request = devices_pb2.ListDevicesRequest()
    for metadata, details in [
        ((), "this needs an API token: send metadata 'authorization: Bearer <token>'"),
        ((("authorization", "Basic abc"),), "malformed authorization metadata"),
        (bearer("iothub_nope"), "unknown API token"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await devices.ListDevices(request, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert details in (refused.value.details() or "")
    read = token_of(hub, Scope.READ)
    assert (await devices.ListDevices(request, metadata=read)).next_page_token == ""
    with pytest.raises(grpc.aio.AioRpcError) as forbidden:
        await stub(channel).SendCommand(commands_pb2.SendCommandRequest(device_id="x", name="x"), metadata=read)
    assert forbidden.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "has scope 'read'; this needs 'command'" in (forbidden.value.details() or "")
    token_id = hub.hub.registry.lookup_token(read[0][1].removeprefix("Bearer "))
    assert token_id is not None
    hub.hub.registry.revoke_token(token_id.id)
    with pytest.raises(grpc.aio.AioRpcError) as revoked:
        await devices.ListDevices(request, metadata=read)
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "has been revoked" in (revoked.value.details() or "")
