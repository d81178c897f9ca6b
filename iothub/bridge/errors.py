"""The bridge's error tree (drawn in :mod:`iothub.bridge`)."""


class BridgeError(Exception):
    """Base of the bridges' own errors."""


class BadRequest(BridgeError):
    """A request parameter that cannot be served; the message names the parameter."""
