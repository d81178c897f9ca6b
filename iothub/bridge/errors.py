"""The bridge's error tree (drawn in :mod:`iothub.bridge`); the HTTP app maps each to a status."""


class BridgeError(Exception):
    """Base of the bridges' own errors."""


class BadRequest(BridgeError):
    """A request parameter or body that cannot be served; the message names it."""


class TooLarge(BridgeError):
    """A request body over ``http.max_body_bytes``."""


class NotFound(BridgeError):
    """The request names something that does not exist (a device, say)."""


class Unauthorized(BridgeError):
    """No valid API token: missing, malformed, unknown or revoked."""


class Forbidden(BridgeError):
    """A valid API token whose scope is too small."""


class Unavailable(BridgeError):
    """The hub cannot serve this now (it is shutting down)."""


class TooSlow(BridgeError):
    """A live-stream client that fell too far behind (or stopped reading) and was disconnected."""
