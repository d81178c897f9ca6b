"""Outward interfaces of the hub: the HTTP app (REST, SSE, metrics, health), its server, the gRPC
server (:mod:`iothub.bridge.grpc`), the stream core every live channel shares
(:mod:`iothub.bridge.streams`), and webhook delivery (:mod:`iothub.bridge.webhooks`, with its
address guard in :mod:`iothub.bridge.targets`).

Errors (HTTP status in :mod:`iothub.bridge.http`'s one exception table, gRPC status code in
:mod:`iothub.bridge.grpc.status`'s)::

    BridgeError
    ├── BadRequest            400  INVALID_ARGUMENT    a parameter or body that cannot be served; names it
    │   └── BadSubscription   400  INVALID_ARGUMENT    a live-stream filter or resume point (iothub.bridge.streams)
    ├── TooLarge              413  -                   a request body over http.max_body_bytes
    ├── NotFound              404  NOT_FOUND           no such device
    ├── Unauthorized          401  UNAUTHENTICATED     no valid API token (HTTP: WWW-Authenticate: Bearer)
    ├── Forbidden             403  PERMISSION_DENIED   the token's scope is too small
    ├── Unavailable           503  UNAVAILABLE         the hub is shutting down
    └── TooSlow               -    RESOURCE_EXHAUSTED  a gRPC stream that fell too far behind

The hub's own errors raised through a handler are mapped by the same tables (registry, commands,
twin, alerts: ``AlertsError`` 400, ``UnknownName`` 404, ``NameTaken`` 409); see
:data:`iothub.bridge.http.ERROR_STATUS` and :data:`iothub.bridge.grpc.status.GRPC_STATUS`.
"""

from iothub.bridge.errors import (
    BadRequest,
    BridgeError,
    Forbidden,
    NotFound,
    TooLarge,
    TooSlow,
    Unauthorized,
    Unavailable,
)

__all__ = ["BadRequest", "BridgeError", "Forbidden", "NotFound", "TooLarge", "TooSlow", "Unauthorized", "Unavailable"]
