"""API tokens on gRPC: metadata ``authorization: Bearer <token>``, checked like the HTTP header.

UNAUTHENTICATED without a valid token (missing, malformed, unknown, revoked), PERMISSION_DENIED when
its scope is too small (errors :class:`~iothub.bridge.errors.Unauthorized` and
:class:`~iothub.bridge.errors.Forbidden`, mapped by :mod:`iothub.bridge.grpc.status`).
"""

from __future__ import annotations

from iothub.bridge.auth import bearer_token, verify
from iothub.bridge.errors import Unauthorized
from iothub.bridge.grpc.status import Context
from iothub.hub.core import Hub
from iothub.hub.registry import Scope, TokenRecord

HOW = "metadata 'authorization: Bearer <token>'"


async def authorize(hub: Hub, context: Context, scope: Scope) -> TokenRecord:
    """The call's token record if it allows ``scope``."""
    header = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            header = value if isinstance(value, str) else value.decode("utf-8", "replace")
            break
    token = bearer_token(header)
    if token is None:
        raise Unauthorized(f"this needs an API token: send {HOW}")
    if token == "":
        raise Unauthorized(f"malformed authorization metadata: expected {HOW}")
    return await verify(hub, token, scope)
