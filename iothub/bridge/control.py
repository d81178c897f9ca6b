"""REST API for acting on devices: commands (scope command) and the device twin.

Command errors (:mod:`iothub.hub.commands`) and twin errors reach the HTTP app's exception table as
they are: 404 unknown device, 409 offline or a stale version, 504 no answer, 400 bad command, 413 a
desired state too large for the device to report back (``ingest.max_payload_bytes``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iothub.bridge.admin import _Body, body
from iothub.bridge.auth import requires
from iothub.bridge.errors import NotFound
from iothub.bridge.rest import device_id_of, hub_of
from iothub.hub.commands import MAX_TIMEOUT_S
from iothub.hub.registry import Scope


class CommandRequestBody(_Body):
    args: dict[str, Any] = Field(default_factory=dict)
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] = 10.0
    queue: bool = False


class TwinPatch(_Body):
    desired: dict[str, Any]
    version: Annotated[int, Field(ge=0)] | None = None


async def send_command(request: Request) -> JSONResponse:
    device_id = device_id_of(request)
    spec = await body(request, CommandRequestBody)
    result = await hub_of(request).commands.send(
        device_id, request.path_params["name"], spec.args, spec.timeout, spec.queue
    )
    return JSONResponse(result.view())


async def _known(request: Request) -> str:
    """The path's device id if it is registered; :class:`NotFound` otherwise."""
    device_id = device_id_of(request)
    if await asyncio.to_thread(hub_of(request).registry.find_device, device_id) is None:
        raise NotFound(f"no device {device_id!r}")
    return device_id


async def get_twin(request: Request) -> JSONResponse:
    device_id = await _known(request)
    twin = await hub_of(request).twins.get(device_id)
    return JSONResponse({"device_id": device_id, **twin.view()})


async def patch_twin(request: Request) -> JSONResponse:
    device_id = await _known(request)
    spec = await body(request, TwinPatch)
    hub = hub_of(request)
    max_bytes = hub.settings.ingest.max_payload_bytes  # what the device's reported echo must fit in
    twin = await hub.twins.patch_desired(device_id, spec.desired, spec.version, max_bytes=max_bytes)
    return JSONResponse({"device_id": device_id, **twin.view()})


routes = [
    Route("/api/v1/devices/{device_id}/commands/{name}", requires(Scope.COMMAND)(send_command), methods=["POST"]),
    Route("/api/v1/devices/{device_id}/twin", requires(Scope.READ)(get_twin), methods=["GET"]),
    Route("/api/v1/devices/{device_id}/twin", requires(Scope.COMMAND)(patch_twin), methods=["PATCH"]),
]
