"""API tokens on HTTP: ``Authorization: Bearer <token>``; :class:`Unauthorized` (401) without a valid
token, :class:`Forbidden` (403) without the scope.

Streaming endpoints that a browser's EventSource must reach (which cannot set headers) may also
accept ``?access_token=`` (``query=True``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from iothub.bridge.errors import Forbidden, Unauthorized
from iothub.hub.core import Hub
from iothub.hub.registry import Scope, TokenRecord

Endpoint = Callable[[Request], Awaitable[Response]]


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization`` value (HTTP header or gRPC metadata): None when absent,
    ``""`` when it is not ``Bearer <token>``."""
    if header is None:
        return None
    kind, _, value = header.partition(" ")
    return value.strip() if kind.lower() == "bearer" and value.strip() else ""


def presented_token(connection: HTTPConnection, query: bool) -> str | None:
    header = connection.headers.get("authorization")
    if header is not None:
        return bearer_token(header)
    if query:
        return connection.query_params.get("access_token")
    return None


async def check(connection: HTTPConnection, scope: Scope, query: bool = False) -> TokenRecord:
    """The request's token record if it allows ``scope``; raises :class:`Unauthorized` or :class:`Forbidden`."""
    token = presented_token(connection, query)
    if token is None:
        raise Unauthorized("this needs an API token: send 'Authorization: Bearer <token>'")
    if token == "":
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    return await verify(connection.app.state.hub, token, scope)


async def verify(hub: Hub, token: str, scope: Scope) -> TokenRecord:
    """The record of ``token`` if it is known, not revoked and allows ``scope``."""
    record = await asyncio.to_thread(hub.registry.lookup_token, token)
    if record is None:
        raise Unauthorized("unknown API token")
    if record.revoked is not None:
        raise Unauthorized(f"API token {record.id!r} has been revoked")
    if not record.scope.allows(scope):
        raise Forbidden(f"API token {record.id!r} has scope '{record.scope}'; this needs '{scope}'")
    return record


def requires(scope: Scope, query: bool = False) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint so it runs only for a token of ``scope`` (or a wider one)."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            request.state.token = await check(request, scope, query)
            return await endpoint(request)

        return guarded

    return decorate
