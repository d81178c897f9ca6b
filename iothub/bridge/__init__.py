"""Outward interfaces of the hub: the HTTP app (REST, metrics, health) and its server.

Errors::

    BridgeError
    └── BadRequest   a request parameter that cannot be served; the message names it (HTTP 400)
"""

from iothub.bridge.errors import BadRequest, BridgeError

__all__ = ["BadRequest", "BridgeError"]
