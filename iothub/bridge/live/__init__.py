"""The live protocol of the two-way channels: WebSocket (``/api/v1/ws``) and gRPC ``HubService.Connect``.

A client subscribes (the stream core's filters, an optional ``resume_from`` event id, an id of its
choosing; several per connection), unsubscribes, sends commands to devices (correlated by a
``ref`` of its choosing) and pings; the hub answers with events, gaps, command results, errors and
pongs. :mod:`.messages` holds the messages and the error codes, :mod:`.session` runs one
connection. A transport brings the frames and an :class:`Outbox`; everything else is shared, so both
channels keep the same rules.

Errors: :class:`ProtocolError` (an ``error`` reply; the connection stays up). What ends a
connection is an :class:`End` with its :class:`EndReason`; each transport maps it to its own close
code or status.
"""

from iothub.bridge.live.messages import (
    Auth,
    Authenticated,
    ClientMessage,
    Command,
    CommandReply,
    CommandStatus,
    ErrorCode,
    ErrorReply,
    Ping,
    Pong,
    ProtocolError,
    Reply,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    parse,
)
from iothub.bridge.live.session import End, EndReason, Outbox, Session, SessionLimits
from iothub.bridge.streams import Delivery

__all__ = [
    "Auth",
    "Authenticated",
    "ClientMessage",
    "Command",
    "CommandReply",
    "CommandStatus",
    "Delivery",
    "End",
    "EndReason",
    "ErrorCode",
    "ErrorReply",
    "Outbox",
    "Ping",
    "Pong",
    "ProtocolError",
    "Reply",
    "Session",
    "SessionLimits",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "parse",
]
