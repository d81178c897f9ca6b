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
from collections.abc import Iterable
from dataclasses import dataclass

from iothub.bridge.errors import BridgeError, TooSlow, Unauthorized, Unavailable
from iothub.bridge.grpc.convert import batches, event_frame, field, gap
from iothub.bridge.grpc.status import Context
from iothub.bridge.streams import Consumer, Limits, StreamFilter
from iothub.bridge.watchdog import Ending, Watched, WatchedChannel
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


class GrpcStreams(WatchedChannel):
    """Runs the channel (:meth:`run`) and the watchdog (:meth:`watch`); :meth:`serve` runs one stream.
    :meth:`close` ends every stream (UNAVAILABLE) and stops routing; ``on_close`` ends Connect's."""

    def __init__(self, hub: Hub, settings: GrpcSettings) -> None:
        limits = Limits(settings.queue_size, settings.max_dropped, settings.replay_limit)
        super().__init__(hub, "grpc", "gRPC", event_frame, limits, settings.send_timeout_s)
        self.hub = hub
        self.settings = settings

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
