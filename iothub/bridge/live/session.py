"""One client connection of a two-way live channel: its subscriptions and its commands.

:class:`Session` is transport-neutral; the WebSocket endpoint and gRPC's ``HubService.Connect``
each feed it the client's frames and give it an :class:`Outbox` that writes the hub's side::

    session = Session(channel, hub.commands, outbox, token, SessionLimits())
    end = await session.run(frames, parse)  # the client's frames until it goes, and how to read one
    # end is None when the client went, else why the hub ends the connection (an End)

A transport whose client can stop sending and still read (gRPC's half-close) runs it with
``half_close=True``: when ``frames`` end, the subscriptions end at once, the commands already sent
are waited for (each bounded by its timeout) and their results written, then the session ends (None).

Everything a session runs (the reader, one task per subscription, one per waiting command) lives in
one TaskGroup inside :meth:`Session.run`; when the session ends, they all end. A message the
hub refuses is answered with an ``error`` reply and the session goes on; what ends it is the client
going, :meth:`Session.end` (the hub stopping, a revoked token, a blocked writer), a command without
the ``command`` scope, or a subscription kicked for falling too far behind (see
:mod:`iothub.bridge.streams` for the queue policy).

Writes are the outbox's: it serialises them (one connection, one writer at a time). While one is
blocked, the subscriptions' queues fill and drop their oldest frames, as the stream core says.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from iothub.bridge.live.messages import (
    Auth,
    ClientMessage,
    Command,
    CommandReply,
    CommandStatus,
    ErrorCode,
    Ping,
    Pong,
    ProtocolError,
    Reply,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from iothub.bridge.streams import BadSubscription, Channel, Consumer, Delivery, StreamFilter
from iothub.hub import commands
from iothub.hub.records import Scope, TokenRecord

F = TypeVar("F")
In = TypeVar("In")  # what the transport reads: a text frame, a protobuf message


class Outbox(Protocol[F]):
    """How a transport writes to its client; calls are serialised by the transport."""

    async def deliver(self, subscription: str, delivery: Delivery[F]) -> None:
        """A gap (if any) and event frames for one subscription."""

    async def reply(self, reply: Reply) -> None:
        """Any other answer: subscribed, unsubscribed, command_result, error, pong."""


class EndReason(enum.Enum):
    """Why the hub ends a session (the transport picks its close code or status for each)."""

    SLOW_CLIENT = "slow_client"  # a subscription fell too far behind, or a write stayed blocked
    FORBIDDEN = "forbidden"  # the token's scope does not allow what the client asked
    UNAUTHORIZED = "unauthorized"  # the token was revoked
    STOPPING = "stopping"  # the hub is shutting down


@dataclass(frozen=True, slots=True)
class End:
    reason: EndReason
    message: str


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_subscriptions: int = 100  # per connection
    max_pending_commands: int = 100  # commands waiting for their result, per connection


@dataclass(eq=False)
class _Subscription(Generic[F]):
    id: str
    consumer: Consumer[F]
    task: asyncio.Task[None] | None = None  # delivers its events
    unsubscribed: bool = False


class _Stop(Exception):
    """Raised inside the session's TaskGroup to end all of its tasks."""


@dataclass(eq=False)
class Session(Generic[F]):
    channel: Channel[F]
    commands: commands.Commands
    outbox: Outbox[F]
    token: TokenRecord
    limits: SessionLimits = SessionLimits()
    subscriptions: dict[str, _Subscription[F]] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # refs of commands waiting for their result
    ended: End | None = None
    _ending: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: asyncio.TaskGroup | None = None
    _commands: set[asyncio.Task[None]] = field(default_factory=set)  # commands waiting or answering
    _half_close: bool = False

    async def run(
        self, frames: AsyncIterator[In], parse: Callable[[In], ClientMessage], half_close: bool = False
    ) -> End | None:
        """Serve the client until it goes (None) or the hub ends the session (why). ``parse`` reads one
        frame (:func:`~iothub.bridge.live.messages.parse` for JSON text), raising :class:`ProtocolError`
        for one it refuses. With ``half_close``, the end of ``frames`` means the client still reads: see
        the module."""
        self._half_close = half_close
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                tasks.create_task(self._read(frames, parse), name="live-read")
                tasks.create_task(self._wait_for_end(), name="live-end")
        except* _Stop:
            pass
        return self.ended

    def end(self, reason: EndReason, message: str) -> None:
        """End the session (the first reason given is the one reported)."""
        if self.ended is None:
            self.ended = End(reason, message)
        self._ending.set()

    def kick(self, message: str) -> None:
        """End a session whose client is too slow (its writes stay blocked), counting its consumers
        as kicked, like those the stream core drops for falling behind."""
        for subscription in self.subscriptions.values():
            self.channel.kick(subscription.consumer)
        self.end(EndReason.SLOW_CLIENT, message)

    async def _wait_for_end(self) -> None:
        await self._ending.wait()
        raise _Stop

    async def _read(self, frames: AsyncIterator[In], parse: Callable[[In], ClientMessage]) -> None:
        async for frame in frames:
            try:
                await self.handle(parse(frame))
            except ProtocolError as exc:
                await self.outbox.reply(exc.reply())
        if self._half_close:
            await self._finish()
        raise _Stop  # the client went, or is answered

    async def _finish(self) -> None:
        """After a half-close: end the subscriptions, then wait for the commands to be answered."""
        for subscription in self.subscriptions.values():
            subscription.unsubscribed = True
            self.channel.detach(subscription.consumer)
        waiting = [s.task for s in self.subscriptions.values() if s.task is not None] + [*self._commands]
        if waiting:  # the subscriptions end after the write in progress; the commands within their timeout
            await asyncio.wait(waiting)

    async def handle(self, message: ClientMessage) -> None:
        """Act on one client message; :class:`ProtocolError` when it is refused."""
        match message:
            case Subscribe():
                await self._subscribe(message)
            case Unsubscribe():
                await self._unsubscribe(message)
            case Command():
                self._command(message)
            case Ping():
                await self.outbox.reply(Pong(message.data))
            case Auth():
                raise ProtocolError(ErrorCode.ALREADY_AUTHENTICATED, "this connection is authenticated already")

    # -- subscriptions -------------------------------------------------------------------------

    async def _subscribe(self, message: Subscribe) -> None:
        sub_id = message.id
        if sub_id in self.subscriptions:
            raise ProtocolError(
                ErrorCode.DUPLICATE_SUBSCRIPTION, f"subscription {sub_id!r} exists on this connection", None, sub_id
            )
        if len(self.subscriptions) >= self.limits.max_subscriptions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"this connection has {self.limits.max_subscriptions} subscriptions, the most it may have",
                None,
                sub_id,
            )
        try:
            stream_filter = StreamFilter.parse(
                message.devices, message.labels, message.metrics, message.types, where="field"
            )
        except BadSubscription as exc:
            raise ProtocolError(ErrorCode.BAD_FILTER, str(exc), None, sub_id) from None
        if message.resume_from is not None:
            try:
                await self.channel.check_resume(message.resume_from, "resume_from")
            except BadSubscription as exc:
                raise ProtocolError(ErrorCode.BAD_RESUME, str(exc), None, sub_id) from None
        consumer = self.channel.open(stream_filter, message.resume_from)  # routed to from here on
        subscription = self.subscriptions[sub_id] = _Subscription(sub_id, consumer)
        try:
            await self.outbox.reply(Subscribed(sub_id))
        except BaseException:
            self.channel.detach(consumer)
            del self.subscriptions[sub_id]
            raise
        assert self._tasks is not None
        subscription.task = self._tasks.create_task(self._stream(subscription), name="live-sub")

    async def _stream(self, subscription: _Subscription[F]) -> None:
        consumer = subscription.consumer
        try:
            async for delivery in consumer:
                await self.outbox.deliver(subscription.id, delivery)
        finally:
            self.channel.detach(consumer)
        if consumer.kicked:
            self.end(
                EndReason.SLOW_CLIENT,
                f"subscription {subscription.id!r} fell too far behind ({consumer.dropped} events dropped)",
            )
        elif not subscription.unsubscribed:
            self.end(EndReason.STOPPING, "the hub is shutting down")

    async def _unsubscribe(self, message: Unsubscribe) -> None:
        """Stop the subscription and answer once its last frame is out: nothing follows ``unsubscribed``,
        and the id can be used again at once."""
        subscription = self.subscriptions.get(message.id)
        if subscription is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SUBSCRIPTION, f"no subscription {message.id!r} on this connection", None, message.id
            )
        subscription.unsubscribed = True
        self.channel.detach(subscription.consumer)
        if subscription.task is not None:
            await asyncio.wait([subscription.task])  # it ends after the write in progress, if any
        del self.subscriptions[message.id]
        await self.outbox.reply(Unsubscribed(message.id))

    # -- commands ------------------------------------------------------------------------------

    def _command(self, message: Command) -> None:
        if not self.token.scope.allows(Scope.COMMAND):
            self.end(
                EndReason.FORBIDDEN,
                f"API token {self.token.id!r} has scope '{self.token.scope}'; commands need '{Scope.COMMAND}'",
            )
            return
        if message.ref in self.pending:
            raise ProtocolError(
                ErrorCode.DUPLICATE_REF, f"command {message.ref!r} is still waiting for its result", message.ref
            )
        if len(self.pending) >= self.limits.max_pending_commands:
            raise ProtocolError(
                ErrorCode.TOO_MANY_COMMANDS,
                f"{self.limits.max_pending_commands} commands are waiting on this connection, the most it may have",
                message.ref,
            )
        self.pending.add(message.ref)
        assert self._tasks is not None
        task = self._tasks.create_task(self._send_command(message), name="live-command")
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _send_command(self, message: Command) -> None:
        try:
            reply = await self._result_of(message)
        finally:
            self.pending.discard(message.ref)
        await self.outbox.reply(reply)

    async def _result_of(self, message: Command) -> CommandReply:
        ref, device, name = message.ref, message.device, message.name
        try:
            result = await self.commands.send(device, name, message.args, message.timeout, message.queue)
        except commands.CommandError as exc:
            status = next(s for kind, s in _STATUS.items() if isinstance(exc, kind))
            return CommandReply(ref, status, device, name, error=str(exc))
        status = CommandStatus.OK if result.ok else CommandStatus.DEVICE_ERROR
        return CommandReply(ref, status, device, name, result.result, result.error, result.id, result.latency_ms)


_STATUS: dict[type[commands.CommandError], CommandStatus] = {
    commands.UnknownDevice: CommandStatus.UNKNOWN_DEVICE,
    commands.DeviceOffline: CommandStatus.OFFLINE,
    commands.CommandTimeout: CommandStatus.TIMEOUT,
    commands.BadCommand: CommandStatus.BAD_COMMAND,
    commands.HubUnavailable: CommandStatus.UNAVAILABLE,
    commands.CommandError: CommandStatus.BAD_COMMAND,  # any other refusal
}
