"""Admin REST API: register, change and remove devices; create and revoke API tokens (scope admin)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from iothub.bridge.auth import requires
from iothub.bridge.rest import device_id_of, device_view, error, hub_of
from iothub.devices.payloads import describe
from iothub.devices.topics import ID_PATTERN
from iothub.hub.fleet import iso
from iothub.hub.registry import AlreadyExists, NotFound, RegistryError, Scope, TokenRecord

Id = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN}$")]
Labels = dict[Id, Annotated[str, StringConstraints(max_length=128)]]
B = TypeVar("B", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceCreate(_Body):
    id: Id
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    type: Id = "generic"
    labels: Labels = Field(default_factory=dict)


class DevicePatch(_Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    type: Id | None = None
    labels: Labels | None = None
    enabled: bool | None = None


class TokenCreate(_Body):
    scope: Scope
    name: Annotated[str, StringConstraints(max_length=128)] = ""


async def body(request: Request, model: type[B]) -> B | JSONResponse:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        return error(400, f"request body: {describe(exc)}")


def _token_view(record: TokenRecord) -> dict[str, Any]:
    return {**record.view(), "created": iso(record.created), "revoked": iso(record.revoked)}


async def create_device(request: Request) -> JSONResponse:
    spec = await body(request, DeviceCreate)
    if isinstance(spec, JSONResponse):
        return spec
    hub = hub_of(request)
    try:
        record, secret = await asyncio.to_thread(hub.registry.add_device, spec.id, spec.name, spec.type, spec.labels)
    except AlreadyExists as exc:
        return error(409, str(exc))
    view = device_view(record, hub.fleet.get(record.id), record.id)
    return JSONResponse({**view, "secret": secret}, status_code=201)


async def patch_device(request: Request) -> JSONResponse:
    device_id = device_id_of(request)
    if isinstance(device_id, JSONResponse):
        return device_id
    change = await body(request, DevicePatch)
    if isinstance(change, JSONResponse):
        return change
    hub = hub_of(request)
    try:
        record = await asyncio.to_thread(
            hub.registry.update_device, device_id, name=change.name, type=change.type, labels=change.labels
        )
        if change.enabled is not None:
            record = await asyncio.to_thread(hub.registry.set_enabled, device_id, change.enabled)
    except NotFound as exc:
        return error(404, str(exc))
    except RegistryError as exc:
        return error(400, str(exc))
    if change.enabled is False:
        await hub.enforce_registry()
    return JSONResponse(device_view(record, hub.fleet.get(device_id), device_id))


async def delete_device(request: Request) -> Response:
    device_id = device_id_of(request)
    if isinstance(device_id, JSONResponse):
        return device_id
    hub = hub_of(request)
    try:
        await asyncio.to_thread(hub.registry.remove_device, device_id)
    except NotFound as exc:
        return error(404, str(exc))
    await hub.enforce_registry()
    return Response(status_code=204)


async def rotate_secret(request: Request) -> JSONResponse:
    device_id = device_id_of(request)
    if isinstance(device_id, JSONResponse):
        return device_id
    hub = hub_of(request)
    try:
        record, secret = await asyncio.to_thread(hub.registry.rotate_secret, device_id)
    except NotFound as exc:
        return error(404, str(exc))
    return JSONResponse({"id": record.id, "secret": secret, "secret_rotated": iso(record.secret_rotated)})


async def list_tokens(request: Request) -> JSONResponse:
    tokens = await asyncio.to_thread(hub_of(request).registry.tokens)
    return JSONResponse({"tokens": [_token_view(t) for t in tokens]})


async def create_token(request: Request) -> JSONResponse:
    spec = await body(request, TokenCreate)
    if isinstance(spec, JSONResponse):
        return spec
    record, token = await asyncio.to_thread(hub_of(request).registry.create_token, spec.scope, spec.name)
    return JSONResponse({**_token_view(record), "token": token}, status_code=201)


async def revoke_token(request: Request) -> JSONResponse:
    try:
        record = await asyncio.to_thread(hub_of(request).registry.revoke_token, request.path_params["token_id"])
    except NotFound as exc:
        return error(404, str(exc))
    return JSONResponse(_token_view(record))


admin = requires(Scope.ADMIN)
routes = [
    Route("/api/v1/devices", admin(create_device), methods=["POST"]),
    Route("/api/v1/devices/{device_id}", admin(patch_device), methods=["PATCH"]),
    Route("/api/v1/devices/{device_id}", admin(delete_device), methods=["DELETE"]),
    Route("/api/v1/devices/{device_id}/secret", admin(rotate_secret), methods=["POST"]),
    Route("/api/v1/tokens", admin(list_tokens), methods=["GET"]),
    Route("/api/v1/tokens", admin(create_token), methods=["POST"]),
    Route("/api/v1/tokens/{token_id}", admin(revoke_token), methods=["DELETE"]),
]
