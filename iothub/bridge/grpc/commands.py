"""``iothub.v1.CommandService``: SendCommand, answered by the device within the call's deadline."""

from __future__ import annotations

from google.protobuf.json_format import MessageToDict

from iothub.bridge.grpc import convert
from iothub.bridge.grpc.auth import authorize
from iothub.bridge.grpc.devices import device_id_of
from iothub.bridge.grpc.handlers import Handlers
from iothub.bridge.grpc.status import Context
from iothub.hub.commands import MAX_TIMEOUT_S, BadCommand
from iothub.hub.core import Hub
from iothub.hub.registry import Scope
from iothub.v1 import commands_pb2, events_pb2

DEFAULT_TIMEOUT_S = 10.0
DEADLINE_MARGIN_S = 0.05  # answer DEADLINE_EXCEEDED with our message just before the client gives up


def command_timeout(requested: float | None, remaining: float | None) -> float:
    """The time to wait for the device: ``timeout_s`` (default 10 s), or the call's deadline if sooner."""
    if requested is not None and not 0 < requested <= MAX_TIMEOUT_S:
        raise BadCommand(f"field 'timeout_s': {requested:g} s is outside (0, {MAX_TIMEOUT_S:g}]")
    timeout = DEFAULT_TIMEOUT_S if requested is None else requested
    if remaining is not None and remaining - DEADLINE_MARGIN_S < timeout:
        return max(remaining - DEADLINE_MARGIN_S, 0.001)
    return timeout


class CommandService:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def handlers(self) -> Handlers:
        service = Handlers(commands_pb2.DESCRIPTOR.services_by_name["CommandService"])
        service.unary("SendCommand", self.send_command, commands_pb2.SendCommandRequest)
        return service

    async def send_command(
        self, request: commands_pb2.SendCommandRequest, context: Context
    ) -> events_pb2.CommandResult:
        await authorize(self.hub, context, Scope.COMMAND)
        device_id = device_id_of(request.device_id, "device_id")
        requested = request.timeout_s if request.HasField("timeout_s") else None
        timeout = command_timeout(requested, context.time_remaining())
        args = MessageToDict(request.args) if request.HasField("args") else {}
        result = await self.hub.commands.send(device_id, request.name, args, timeout, request.queue)
        return convert.command_result(result.view())
