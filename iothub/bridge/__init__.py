"""Outward interfaces of the hub: the HTTP app (REST, SSE, metrics, health), its server, the
stream core every live channel shares (:mod:`iothub.bridge.streams`), and webhook delivery
(:mod:`iothub.bridge.webhooks`, with its address guard in :mod:`iothub.bridge.targets`).

Errors (HTTP status in :mod:`iothub.bridge.http`'s one exception table)::

    BridgeError
    ├── BadRequest            400  a parameter or body that cannot be served; the message names it
    │   └── BadSubscription   400  a live-stream filter or resume point (iothub.bridge.streams)
    ├── TooLarge              413  a request body over http.max_body_bytes
    ├── NotFound              404  no such device
    ├── Unauthorized          401  no valid API token (with WWW-Authenticate: Bearer realm="iothub")
    ├── Forbidden             403  the token's scope is too small
    └── Unavailable           503  the hub is shutting down

The hub's own errors raised through a handler are mapped by the same table (registry, commands,
twin, alerts: ``AlertsError`` 400, ``UnknownName`` 404, ``NameTaken`` 409); see
:data:`iothub.bridge.http.ERROR_STATUS`.
"""

from iothub.bridge.errors import BadRequest, BridgeError, Forbidden, NotFound, TooLarge, Unauthorized, Unavailable

__all__ = ["BadRequest", "BridgeError", "Forbidden", "NotFound", "TooLarge", "Unauthorized", "Unavailable"]
