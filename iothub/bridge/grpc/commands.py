"""``iothub.v1.CommandService``: SendCommand, answered by the device within the call's deadline."""

from __future__ import annotations

import asyncio

from google.protobuf.json_format import MessageToDict

from iothub.bridge.grpc import convert
from iothub.bridge.grpc.auth import authorize
from iothub.bridge.grpc.devices import device_id_of
from iothub.bridge.grpc.handlers import Handlers
from iothub.bridge.grpc.status import Context
from iothub.hub.commands import MAX_TIMEOUT_S, BadCommand, CommandTimeout
from iothub.hub.core import Hub
from iothub.hub.registry import Scope
from iothub.v1 import commands_pb2, events_pb2

DEFAULT_TIMEOUT_S = 10.0
DEADLINE_MARGIN_S = 0.1  # the hub answers DEADLINE_EXCEEDED itself this long before the client gives up


def check_timeout(requested: float | None) -> float:
    """``timeout_s`` (default 10 s), refused outside (0, 300]."""
    if requested is None:
        return DEFAULT_TIMEOUT_S
    if not 0 < requested <= MAX_TIMEOUT_S:
        raise BadCommand(f"field 'timeout_s': {requested:g} s is outside (0, {MAX_TIMEOUT_S:g}]")
    return requested


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
        """Waits for the device within ``timeout_s`` and within the call's deadline, whichever ends
        first; either way the answer is DEADLINE_EXCEEDED with the hub's message (sent a little
        before the deadline, so the client gets it rather than its own "Deadline Exceeded")."""
        await authorize(self.hub, context, Scope.COMMAND)
        device_id = device_id_of(request.device_id, "device_id")
        timeout = check_timeout(request.timeout_s if request.HasField("timeout_s") else None)
        args = MessageToDict(request.args) if request.HasField("args") else {}
        remaining = context.time_remaining()
        budget = None if remaining is None else max(remaining - DEADLINE_MARGIN_S, 0.001)
        try:
            async with asyncio.timeout(budget):
                result = await self.hub.commands.send(device_id, request.name, args, timeout, request.queue)
        except TimeoutError:
            raise CommandTimeout(
                f"device {device_id!r} did not answer {request.name!r} within the call's deadline ({remaining:.3g} s)"
            ) from None
        return convert.command_result(result.view())
