"""REST API for acting on devices: commands (scope command) and the device twin."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iothub.bridge.admin import _Body, body
from iothub.bridge.auth import requires
from iothub.bridge.rest import device_id_of, error, hub_of
from iothub.hub.commands import MAX_TIMEOUT_S, BadCommand, CommandTimeout, DeviceOffline, UnknownDevice
from iothub.hub.registry import Scope
from iothub.hub.twin import VersionConflict


class CommandRequestBody(_Body):
    args: dict[str, Any] = Field(default_factory=dict)
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] = 10.0
    queue: bool = False


class TwinPatch(_Body):
    desired: dict[str, Any]
    version: Annotated[int, Field(ge=0)] | None = None


_STATUS = {UnknownDevice: 404, DeviceOffline: 409, CommandTimeout: 504, BadCommand: 400}


async def send_command(request: Request) -> JSONResponse:
    device_id = device_id_of(request)
    if isinstance(device_id, JSONResponse):
        return device_id
    spec = await body(request, CommandRequestBody)
    if isinstance(spec, JSONResponse):
        return spec
    try:
        result = await hub_of(request).commands.send(
            device_id, request.path_params["name"], spec.args, spec.timeout, spec.queue
        )
    except (UnknownDevice, DeviceOffline, CommandTimeout, BadCommand) as exc:
        return error(_STATUS[type(exc)], str(exc))
    return JSONResponse(result.view())


async def _known(request: Request) -> str | JSONResponse:
    device_id = device_id_of(request)
    if isinstance(device_id, JSONResponse):
        return device_id
    if hub_of(request).registry.find_device(device_id) is None:
        return error(404, f"no device {device_id!r}")
    return device_id


async def get_twin(request: Request) -> JSONResponse:
    device_id = await _known(request)
    if isinstance(device_id, JSONResponse):
        return device_id
    twin = await hub_of(request).twins.get(device_id)
    return JSONResponse({"device_id": device_id, **twin.view()})


async def patch_twin(request: Request) -> JSONResponse:
    device_id = await _known(request)
    if isinstance(device_id, JSONResponse):
        return device_id
    spec = await body(request, TwinPatch)
    if isinstance(spec, JSONResponse):
        return spec
    try:
        twin = await hub_of(request).twins.patch_desired(device_id, spec.desired, spec.version)
    except VersionConflict as exc:
        return error(409, str(exc))
    return JSONResponse({"device_id": device_id, **twin.view()})


routes = [
    Route("/api/v1/devices/{device_id}/commands/{name}", requires(Scope.COMMAND)(send_command), methods=["POST"]),
    Route("/api/v1/devices/{device_id}/twin", requires(Scope.READ)(get_twin), methods=["GET"]),
    Route("/api/v1/devices/{device_id}/twin", requires(Scope.COMMAND)(patch_twin), methods=["PATCH"]),
]
