"""API tokens on HTTP: ``Authorization: Bearer <token>``; :class:`Unauthorized` (401) without a valid
token, :class:`Forbidden` (403) without the scope.

Streaming endpoints that a browser's EventSource must reach (which cannot set headers) may also
accept ``?access_token=`` (``query=True``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
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


def presented_token(request: Request, query: bool) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        return bearer_token(header)
    if query:
        return request.query_params.get("access_token")
    return None


async def check(request: Request, scope: Scope, query: bool = False) -> TokenRecord:
    """The request's token record if it allows ``scope``; raises :class:`Unauthorized` or :class:`Forbidden`."""
    hub: Hub = request.app.state.hub
    return await check_token(hub, presented_token(request, query), scope)


async def check_token(
    hub: Hub, token: str | None, scope: Scope, how: str = "'Authorization: Bearer <token>'"
) -> TokenRecord:
    """The record of ``token`` (as :func:`bearer_token` gives it) if it allows ``scope``; raises
    :class:`Unauthorized` or :class:`Forbidden`. ``how`` says how to send a token."""
    if token is None:
        raise Unauthorized(f"this needs an API token: send {how}")
    if token == "":
        raise Unauthorized(f"malformed Authorization header: expected {how}")
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
