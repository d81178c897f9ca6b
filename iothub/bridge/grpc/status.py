"""The one table from errors to gRPC status codes, and the guard every RPC handler runs in.

A handler raises errors (the bridge's, the hub's); :func:`guarded` ends the call with the code
:data:`GRPC_STATUS` gives the error's class (the most specific class wins) and the error's message,
which names what is wrong. Anything else is a bug: logged, and the call ends with INTERNAL.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import StatusCode

from iothub.bridge import errors
from iothub.hub import commands, registry

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Res = TypeVar("Res")

GRPC_STATUS: dict[type[Exception], StatusCode] = {
    errors.BadRequest: StatusCode.INVALID_ARGUMENT,  # a bad range, aggregation, filter or resume point
    errors.NotFound: StatusCode.NOT_FOUND,
    errors.Unauthorized: StatusCode.UNAUTHENTICATED,
    errors.Forbidden: StatusCode.PERMISSION_DENIED,
    errors.Unavailable: StatusCode.UNAVAILABLE,  # the hub is shutting down
    errors.TooSlow: StatusCode.RESOURCE_EXHAUSTED,  # a stream that fell too far behind its queue
    registry.NotFound: StatusCode.NOT_FOUND,
    registry.AlreadyExists: StatusCode.ALREADY_EXISTS,
    registry.RegistryError: StatusCode.INVALID_ARGUMENT,
    commands.UnknownDevice: StatusCode.NOT_FOUND,
    commands.DeviceOffline: StatusCode.UNAVAILABLE,  # offline or disabled, and not queued
    commands.CommandTimeout: StatusCode.DEADLINE_EXCEEDED,  # the device did not answer in time
    commands.BadCommand: StatusCode.INVALID_ARGUMENT,
    commands.HubUnavailable: StatusCode.UNAVAILABLE,  # the external broker is unreachable
}
"""Each error a handler may raise, and its gRPC status code."""


def status_of(exc: Exception) -> StatusCode | None:
    return next((GRPC_STATUS[k] for k in type(exc).__mro__ if k in GRPC_STATUS), None)


def guarded(handler: Callable[[Req, Context], Awaitable[Res]]) -> Callable[[Req, Context], Awaitable[Res]]:
    """Run ``handler``; end the call with the status of the error it raises, and its message."""

    @functools.wraps(handler)
    async def guard(request: Req, context: Context) -> Res:
        try:
            return await handler(request, context)
        except Exception as exc:
            code = status_of(exc)
            if code is not None:
                await context.abort(code, str(exc))
            if isinstance(exc, grpc.aio.AbortError):  # context.abort() was called
                raise
            log.exception("gRPC %s failed", handler.__qualname__)
            await context.abort(StatusCode.INTERNAL, "internal error (the hub logged it)")
            raise AssertionError("abort() returned") from None  # it always raises AbortError

    return guard
