"""``iothub.v1.HubService.Connect``: the live protocol's session (:mod:`iothub.bridge.live`) on gRPC.

The gRPC twin of the WebSocket channel: the same :class:`~iothub.bridge.live.Session` runs each
stream, so messages, rules and error codes are the same. Each ``ClientMessage`` becomes the JSON
object a WebSocket client would send, parsed by the session's own :func:`~iothub.bridge.live.parse`
(one set of validation rules); each reply becomes its ``ServerMessage``.

Event frames come from the ``grpc`` channel as they are (serialized once per event, each an element
of ``repeated Event events = 1``); a subscription's ``SubscriptionEvents`` is a batch of them joined,
with its ``subscription`` field (and the gap, if any) in front: byte concatenations, no encoding.
How a stream ends: the client half-closes (its subscriptions end, the results of the commands it
sent are delivered, each within its timeout, then OK), or the session's :class:`~iothub.bridge.live.End`
maps to a status through the bridge's errors (:data:`END_ERRORS`), then :mod:`iothub.bridge.grpc.status`'s one table.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict

from iothub.bridge.errors import BridgeError, Forbidden, TooSlow, Unauthorized, Unavailable
from iothub.bridge.grpc import convert
from iothub.bridge.grpc.auth import authorize
from iothub.bridge.grpc.handlers import Handlers
from iothub.bridge.grpc.status import Context
from iothub.bridge.grpc.streams import GrpcStreams
from iothub.bridge.live import (
    ClientMessage,
    CommandReply,
    Delivery,
    EndReason,
    ErrorCode,
    ErrorReply,
    Pong,
    ProtocolError,
    Reply,
    Session,
    SessionLimits,
    Subscribed,
    Unsubscribed,
    parse,
)
from iothub.bridge.watchdog import Ending, Watched, WatchedWriter
from iothub.hub.core import Hub
from iothub.hub.registry import Scope
from iothub.v1 import hub_pb2

END_ERRORS: dict[EndReason, type[BridgeError]] = {
    EndReason.SLOW_CLIENT: TooSlow,  # RESOURCE_EXHAUSTED
    EndReason.FORBIDDEN: Forbidden,  # PERMISSION_DENIED
    EndReason.UNAUTHORIZED: Unauthorized,  # UNAUTHENTICATED
    EndReason.STOPPING: Unavailable,  # UNAVAILABLE
}


KINDS = tuple(f.name for f in hub_pb2.ClientMessage.DESCRIPTOR.oneofs_by_name["kind"].fields)


def read_message(message: hub_pb2.ClientMessage) -> ClientMessage:
    """A ``ClientMessage`` as the live protocol's message, checked by its rules (:func:`parse`)."""
    if message.WhichOneof("kind") is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"ClientMessage sets none of its kinds: {', '.join(KINDS)}")
    return parse(as_json(message))


def as_json(message: hub_pb2.ClientMessage) -> str:
    """The WebSocket protocol's JSON object for a ``ClientMessage``."""
    kind = message.WhichOneof("kind")
    out: dict[str, Any] = {}
    if kind == "subscribe":
        s = message.subscribe
        f = s.filter
        out = {"type": "subscribe", "id": s.id, "devices": [*f.devices], "labels": [*f.labels],
               "metrics": [*f.metrics], "types": [*f.types]}  # fmt: skip
        if s.HasField("resume_from"):
            out["resume_from"] = s.resume_from
    elif kind == "unsubscribe":
        out = {"type": "unsubscribe", "id": message.unsubscribe.id}
    elif kind == "command":
        c = message.command
        out = {"type": "command", "ref": c.ref, "device": c.device, "name": c.name, "args": MessageToDict(c.args),
               "queue": c.queue}  # fmt: skip
        if c.HasField("timeout_s"):
            out["timeout"] = c.timeout_s
    elif kind == "ping":
        out = {"type": "ping", "data": MessageToDict(message.ping.data) if message.ping.HasField("data") else None}
    return json.dumps(out)


def reply_message(reply: Reply) -> hub_pb2.ServerMessage:
    match reply:
        case Subscribed():
            return hub_pb2.ServerMessage(subscribed=hub_pb2.Subscribed(subscription=reply.subscription))
        case Unsubscribed():
            return hub_pb2.ServerMessage(unsubscribed=hub_pb2.Unsubscribed(subscription=reply.subscription))
        case CommandReply():
            return hub_pb2.ServerMessage(
                command_result=hub_pb2.CommandReply(
                    ref=reply.ref, status=reply.status.value, device=reply.device, name=reply.name,
                    result=convert.struct(reply.result) if reply.result is not None else None, error=reply.error,
                    id=reply.request_id, latency_ms=reply.latency_ms,
                )
            )  # fmt: skip
        case ErrorReply():
            return hub_pb2.ServerMessage(
                error=hub_pb2.ErrorReply(
                    code=reply.code.value, message=reply.message, ref=reply.ref, subscription=reply.subscription
                )
            )
        case Pong():
            pong = hub_pb2.Pong()
            if reply.data is not None:
                pong.data.CopyFrom(convert.json_value(reply.data))
            return hub_pb2.ServerMessage(pong=pong)
    raise AssertionError(f"no gRPC message for {reply!r}")  # Authenticated: gRPC authenticates by metadata


@dataclass(eq=False)
class _Stream:
    """One Connect stream: the :class:`~iothub.bridge.live.Outbox` of its session."""

    context: Context
    writer: WatchedWriter = field(default_factory=WatchedWriter)
    _suffixes: dict[str, bytes] = field(default_factory=dict)

    async def deliver(self, subscription: str, delivery: Delivery[bytes]) -> None:
        suffix = self._suffixes.get(subscription)
        if suffix is None:
            suffix = self._suffixes[subscription] = convert.field(2, subscription.encode())
        head = suffix
        if delivery.gap is not None:
            head += convert.field(3, convert.gap(delivery.gap).SerializeToString())
        # Each batch is a SubscriptionEvents message, sent as ServerMessage.events (field 1).
        await self._write([convert.field(1, batch) for batch in convert.batches(head, delivery.frames)])

    async def reply(self, reply: Reply) -> None:
        await self._write([reply_message(reply).SerializeToString()])

    async def _write(self, messages: list[bytes]) -> None:
        async with self.writer.turn():
            for message in messages:
                await self.context.write(message)


class HubService:
    def __init__(self, hub: Hub, streams: GrpcStreams) -> None:
        self.hub = hub
        self.streams = streams
        settings = streams.settings
        self.limits = SessionLimits(settings.max_subscriptions, settings.max_pending_commands)
        self.sessions: set[Session[bytes]] = set()
        streams.on_close.append(self._stop_all)

    def handlers(self) -> Handlers:
        service = Handlers(hub_pb2.DESCRIPTOR.services_by_name["HubService"])
        service.bidi("Connect", self.connect, hub_pb2.ClientMessage)
        return service

    def _stop_all(self) -> None:
        for session in list(self.sessions):
            session.end(EndReason.STOPPING, "the hub is shutting down")

    async def connect(self, requests: AsyncIterator[hub_pb2.ClientMessage], context: Context) -> None:
        token = await authorize(self.hub, context, Scope.READ)
        if self.streams.closing.is_set():
            raise Unavailable("the hub is shutting down")
        stream = _Stream(context)
        session: Session[bytes] = Session(self.streams.channel, self.hub.commands, stream, token, self.limits)
        watched = stream.writer.watched = Watched(
            token.id, functools.partial(self._ended_by_watchdog, session, token.id)
        )
        self.sessions.add(session)
        self.streams.watchdog.watched.add(watched)
        try:
            await context.send_initial_metadata(())
            # A half-close still reads: the results of the commands sent come first, then OK.
            end = await session.run(requests, read_message, half_close=True)
        finally:
            self.streams.watchdog.watched.discard(watched)
            self.sessions.discard(session)
        if end is not None:
            raise END_ERRORS[end.reason](end.message)

    def _ended_by_watchdog(self, session: Session[bytes], token_id: str, why: Ending) -> None:
        if why is Ending.REVOKED:
            session.end(EndReason.UNAUTHORIZED, f"API token {token_id!r} has been revoked")
        else:
            session.kick(f"writes blocked for {self.streams.settings.send_timeout_s:g} s")
