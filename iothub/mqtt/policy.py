"""What the application plugs into the MQTT server: every piece is passed to :class:`~.server.MqttServer`.

The server knows MQTT; who may connect, what they may touch and what a message means are the
application's. ``P`` is the application's principal: the server keeps it opaque and hands it back::

    CONNECT   ─▶ Authenticator.authenticate(Credentials) ─▶ P, or Refusal(code, reason) ─▶ CONNACK code
                 Acl.may_publish(P, will topic)          ─▶ no: CONNACK 0x05
    accepted  ─▶ Hooks.on_connect(client_id, P)
    PUBLISH   ─▶ Acl.may_publish(P, topic) ─no─▶ Counters.acl_denied("publish"), dropped
                  │yes                           (and the client closed: ServerOptions.disconnect_on_acl_violation)
                  ▼
                 Hooks.on_publish(client_id, topic, payload) ─▶ ticket or None; then routed to subscribers
                 (durable ack: the PUBACK/PUBREC waits until MqttServer.committed(ticket))
    SUBSCRIBE ─▶ Acl.may_subscribe(P, filter) ─▶ SUBACK ─▶ Hooks.on_subscribed(client_id, P, filter)
    gone      ─▶ Hooks.on_disconnect(client_id, P, DisconnectReason)

    Counters: connects by result, ACL denials, queue_full drops, protocol errors.
    Gauges are read when wanted: MqttServer.stats().

The hooks are called on the event loop, once per event, and must not block: ``on_publish`` is on
the path of every message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, TypeVar

P_co = TypeVar("P_co", covariant=True)
P_contra = TypeVar("P_contra", contravariant=True)


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """The server's own settings."""

    max_inflight: int = 20  # unacknowledged QoS 1/2 messages per client; the rest wait in its queue
    max_queued: int = 1000  # messages queued per client; past this the oldest are dropped
    max_packet_bytes: int = 1024 * 1024  # a larger packet closes the connection
    max_unacked: int = 1000  # a client's messages waiting for durable ack before it is no longer read
    durable_ack: bool = True  # acknowledge a message only once Hooks.on_publish's ticket is committed
    disconnect_on_acl_violation: bool = False  # a forbidden publish also closes the client
    max_connections: int | None = None  # more are refused at once with CONNACK 0x03
    connect_timeout_s: float = 10.0  # a connection without a CONNECT in this time is closed


class DisconnectReason(enum.Enum):
    """Why a client's connection ended; whether its Will was published follows from it."""

    CLEAN = "clean"  # the client sent DISCONNECT; no Will
    WILL = "will"  # the connection dropped (or broke the protocol); its Will was published
    DROPPED = "dropped"  # the connection dropped (or broke the protocol); it had no Will
    KEEPALIVE = "keepalive"  # silent for 1.5x its keepalive: closed, Will published
    TAKEN_OVER = "taken_over"  # a new connection with the same client id replaced it; no Will
    ACL_VIOLATION = "acl_violation"  # closed for a forbidden publish; Will published
    CLOSED = "closed"  # closed by the application (MqttServer.disconnect); Will published
    SERVER_STOPPING = "server_stopping"  # the server is closing; no Will


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a CONNECT says about who it is."""

    client_id: str  # as sent, or the one the server assigned to an empty id [MQTT-3.1.3-6]
    username: str | None
    password: bytes | None
    certificate_cn: str | None  # CN of the verified TLS client certificate, if one was presented


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused CONNECT: the CONNACK return code (0x01-0x05) and why, for the log."""

    code: int
    reason: str


class Authenticator(Protocol[P_co]):
    async def authenticate(self, credentials: Credentials) -> P_co | Refusal: ...


class Acl(Protocol[P_contra]):
    def may_publish(self, principal: P_contra, topic: str) -> bool: ...

    def may_subscribe(self, principal: P_contra, topic_filter: str) -> bool: ...


class Hooks(Protocol[P_contra]):
    def on_publish(self, client_id: str | None, topic: str, payload: bytes) -> int | None:
        """An accepted message (``client_id`` None: the application's own); a ticket for durable ack."""

    def on_connect(self, client_id: str, principal: P_contra) -> None: ...

    def on_disconnect(self, client_id: str, principal: P_contra, reason: DisconnectReason) -> None: ...

    async def on_subscribed(self, client_id: str, principal: P_contra, topic_filter: str) -> None:
        """A subscription was granted and its SUBACK sent."""


class Counters(Protocol):
    def connect(self, result: str) -> None:
        """A CONNECT answered: ``ok``, the CONNACK code of a refusal (``0x01``..``0x05``), or ``full``."""

    def acl_denied(self, action: str) -> None:
        """``publish`` or ``subscribe`` refused by the ACL (or a client's publish to a ``$`` topic)."""

    def dropped(self, client_id: str) -> None:
        """A message for ``client_id`` dropped: its queue was full (the oldest goes)."""

    def protocol_error(self) -> None:
        """A connection closed for breaking the protocol."""
