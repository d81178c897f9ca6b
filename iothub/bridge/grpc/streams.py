"""The gRPC channel of the stream core, the open server streams, and their watchdog.

``Subscribe`` and ``WatchPresence`` are consumers of one :class:`~iothub.bridge.streams.Channel`
named ``grpc`` (counters ``iothub_stream_*{channel="grpc"}``). Its frames are serialized once per
event (:func:`~iothub.bridge.grpc.convert.event_frame`) and written as they are: the RPCs' response
serializer is the identity. What the core delivers at once goes out as one message: a batch of
events, with the gap first when some were lost before them (gaps are explicit). A stream ends with:

- RESOURCE_EXHAUSTED when it fell too far behind (past ``grpc.max_dropped`` lost events, the stream
  core's drop policy) or its writes stayed blocked for ``grpc.send_timeout_s`` (a client that
  stopped reading); the message says which, and to resume from the last event id received;
- UNAUTHENTICATED when its API token is revoked (checked once a second, here or by another process);
- UNAVAILABLE when the hub shuts down (resume from the last event id received).

A stream sends its initial metadata once it is attached to the channel, so a client that waits for
it (``call.wait_for_connection()``) knows every event committed from then on will reach it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from iothub.bridge.errors import BridgeError, TooSlow, Unauthorized, Unavailable
from iothub.bridge.grpc.convert import batches, event_frame, field, gap
from iothub.bridge.grpc.status import Context
from iothub.bridge.streams import Channel, Consumer, Limits, StreamFilter, StreamMetrics
from iothub.bridge.watchdog import Ending, Watchdog, Watched
from iothub.hub.core import Hub
from iothub.hub.settings import GrpcSettings

log = logging.getLogger(__name__)
RESUME_HINT = "resume with resume_from = the last event id received"
GAP = 2  # the gap's field in SubscribeResponse and PresenceUpdate


@dataclass(eq=False)
class _Open:
    """One open server stream: its task (the watchdog cancels it) and why it was ended."""

    task: asyncio.Task[object] | None
    consumer: Consumer[bytes] | None = None
    ended: BridgeError | None = None


class GrpcStreams:
    """Runs the channel (:meth:`run`) and the watchdog (:meth:`watch`); :meth:`serve` runs one stream."""

    def __init__(self, hub: Hub, settings: GrpcSettings) -> None:
        self.hub = hub
        self.settings = settings
        limits = Limits(settings.queue_size, settings.max_dropped, settings.replay_limit)
        self.channel: Channel[bytes] = Channel("grpc", hub.bus, hub.store, hub.labels, event_frame, limits)
        StreamMetrics.of(hub.metrics.registry).add(self.channel)
        self.watchdog = Watchdog("gRPC", hub.registry, settings.send_timeout_s)
        self.closing = asyncio.Event()
        self.on_close: list[Callable[[], None]] = []  # what else ends at close (Connect's sessions)

    async def run(self) -> None:
        try:
            await self.channel.run()
        finally:
            self.close()

    async def watch(self) -> None:
        await self.watchdog.run(self.closing)

    def close(self) -> None:
        """End every stream (UNAVAILABLE) and stop routing."""
        self.closing.set()
        for callback in self.on_close:
            callback()
        self.channel.close()

    async def serve(
        self,
        context: Context,
        token_id: str,
        stream_filter: StreamFilter,
        resume_after: int | None,
        first: Iterable[bytes] = (),
    ) -> None:
        """Write ``first``, then what the core delivers (a replay after ``resume_after``, then live),
        until the client goes, the stream is ended (see the module), or the hub stops."""
        if self.closing.is_set():
            raise Unavailable("the hub is shutting down")
        if resume_after is not None:
            await self.channel.check_resume(resume_after, "resume_from")
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        stream = _Open(task)
        watched = Watched(token_id, functools.partial(self._end, stream, token_id))
        self.watchdog.watched.add(watched)
        try:
            with self.channel.attach(stream_filter, resume_after) as consumer:
                stream.consumer = consumer
                watched.sending_since = loop.time()
                await context.send_initial_metadata(())  # attached: what is committed from now on reaches it
                for message in batches(b"", list(first)):
                    await context.write(message)
                watched.sending_since = None
                async for delivery in consumer:
                    watched.sending_since = loop.time()
                    head = b"" if delivery.gap is None else field(GAP, gap(delivery.gap).SerializeToString())
                    for message in batches(head, delivery.frames):
                        await context.write(message)
                    watched.sending_since = None
            if consumer.kicked:
                raise TooSlow(f"this stream fell too far behind (over {self.settings.max_dropped} events lost); "
                              + RESUME_HINT)  # fmt: skip
            raise Unavailable(f"the hub is shutting down; {RESUME_HINT}")
        except asyncio.CancelledError:
            if stream.ended is None or task is None:
                raise
            task.uncancel()  # the watchdog's doing
            raise stream.ended from None
        finally:
            self.watchdog.watched.discard(watched)

    def _end(self, stream: _Open, token_id: str, why: Ending) -> None:
        """The watchdog ends a stream: its token was revoked, or its client stopped reading."""
        if why is Ending.REVOKED:
            stream.ended = Unauthorized(f"API token {token_id!r} has been revoked")
        else:
            if stream.consumer is not None:
                self.channel.kick(stream.consumer)
            stream.ended = TooSlow(
                f"this stream's client stopped reading for over {self.settings.send_timeout_s:g} s; {RESUME_HINT}"
            )
        if stream.task is not None:
            stream.task.cancel()
