"""Admin REST API: register, change and remove devices; create and revoke API tokens (scope admin)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from iothub.bridge.auth import requires
from iothub.bridge.errors import BadRequest, TooLarge
from iothub.bridge.rest import device_id_of, device_view, hub_of
from iothub.devices.payloads import describe
from iothub.devices.topics import ID_PATTERN
from iothub.hub.fleet import iso
from iothub.hub.registry import Scope, TokenRecord

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


async def body(request: Request, model: type[B]) -> B:
    """The request body as ``model``; :class:`BadRequest` (``request body: ...``) when it does not fit,
    :class:`TooLarge` when it is over ``http.max_body_bytes``."""
    raw = await read_limited(request, hub_of(request).settings.http.max_body_bytes)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise BadRequest(f"request body: {describe(exc)}") from None


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, refused as soon as it is known to be over ``limit`` bytes: before reading when
    its Content-Length says so, else once that much has arrived (a chunked body)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body: {declared} bytes, over the {limit}-byte limit (http.max_body_bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body: over the {limit}-byte limit (http.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _token_view(record: TokenRecord) -> dict[str, Any]:
    return {**record.view(), "created": iso(record.created), "revoked": iso(record.revoked)}


async def create_device(request: Request) -> JSONResponse:
    spec = await body(request, DeviceCreate)
    hub = hub_of(request)
    record, secret = await asyncio.to_thread(hub.registry.add_device, spec.id, spec.name, spec.type, spec.labels)
    view = device_view(record, hub.fleet.get(record.id), record.id)
    return JSONResponse({**view, "secret": secret}, status_code=201)


async def patch_device(request: Request) -> JSONResponse:
    device_id = device_id_of(request)
    change = await body(request, DevicePatch)
    hub = hub_of(request)
    record = await asyncio.to_thread(
        hub.registry.update_device, device_id, name=change.name, type=change.type, labels=change.labels
    )
    if change.enabled is not None:
        record = await asyncio.to_thread(hub.registry.set_enabled, device_id, change.enabled)
    if change.enabled is False:
        await hub.enforce_registry()
    return JSONResponse(device_view(record, hub.fleet.get(device_id), device_id))


async def delete_device(request: Request) -> Response:
    device_id = device_id_of(request)
    hub = hub_of(request)
    await asyncio.to_thread(hub.registry.remove_device, device_id)
    await hub.enforce_registry()
    return Response(status_code=204)


async def rotate_secret(request: Request) -> JSONResponse:
    device_id = device_id_of(request)
    hub = hub_of(request)
    record, secret = await asyncio.to_thread(hub.registry.rotate_secret, device_id)
    return JSONResponse({"id": record.id, "secret": secret, "secret_rotated": iso(record.secret_rotated)})


async def list_tokens(request: Request) -> JSONResponse:
    tokens = await asyncio.to_thread(hub_of(request).registry.tokens)
    return JSONResponse({"tokens": [_token_view(t) for t in tokens]})


async def create_token(request: Request) -> JSONResponse:
    spec = await body(request, TokenCreate)
    record, token = await asyncio.to_thread(hub_of(request).registry.create_token, spec.scope, spec.name)
    return JSONResponse({**_token_view(record), "token": token}, status_code=201)


async def revoke_token(request: Request) -> JSONResponse:
    record = await asyncio.to_thread(hub_of(request).registry.revoke_token, request.path_params["token_id"])
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
