"""Server-Sent Events: ``GET /api/v1/stream``, the live event stream for dashboards.

This module is the SSE wire format and its HTTP handling; filters, routing, per-client queues,
resume and gaps are the stream core's (:mod:`iothub.bridge.streams`), shared with the other live
channels. Here: query parameters into a :class:`StreamFilter`, ``Last-Event-ID`` (or
``?last_event_id=`` on a first connect) into a resume point, frames (``id:``/``event:``/``data:``,
built once per event by the core; a ``gap`` event has no ``id:``, so the client's position stays at
the last event it really received), ``retry:``, heartbeats (sse-starlette's ping), and each client's
writes: everything queued for it goes out in one chunk.

A client that falls behind loses its oldest frames and gets a ``gap`` event; past ``sse.max_dropped``
it is disconnected with an ``error`` event. One whose write stays blocked for ``sse.send_timeout_s``
is disconnected within a second by its watchdog (:mod:`iothub.bridge.watchdog`; a timeout around
every write would cost a cancel scope per event per client), as is one whose API token is revoked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from iothub.bridge.auth import requires
from iothub.bridge.errors import Unavailable
from iothub.bridge.params import check_known
from iothub.bridge.streams import BadSubscription, Channel, Consumer, Limits, StreamFilter, StreamGap, StreamMetrics
from iothub.bridge.watchdog import Ending, Watchdog, Watched
from iothub.hub.core import Hub
from iothub.hub.events import HubEvent
from iothub.hub.registry import Scope as TokenScope
from iothub.hub.settings import SseSettings

KICKED = b'event: error\ndata: {"error":"disconnected: this client fell too far behind"}\n\n'


def sse_frame(event: HubEvent, body: bytes) -> bytes:
    """The event as one SSE frame; the stream core calls it once per event (and metrics filter)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.type.value.encode(), body)


def gap_frame(gap: StreamGap) -> bytes:
    return b"event: gap\ndata: %s\n\n" % json.dumps(gap.view(), separators=(",", ":")).encode()


@dataclass(eq=False)
class _Writer:
    """One SSE response, as its watchdog sees it."""

    watched: Watched
    consumer: Consumer[bytes] | None = None
    request_task: asyncio.Task[Any] | None = None  # serves this response
    ended_by_watchdog: bool = False


class SseHub:
    """The SSE channel of the stream core, the open responses, and their watchdog."""

    def __init__(self, hub: Hub, settings: SseSettings) -> None:
        self.hub = hub
        self.settings = settings
        limits = Limits(settings.queue_size, settings.max_dropped, settings.replay_limit)
        self.channel: Channel[bytes] = Channel("sse", hub.bus, hub.store, hub.labels, sse_frame, limits)
        # iothub_sse_* as well as iothub_stream_*{channel="sse"}
        StreamMetrics.of(hub.metrics.registry).add(self.channel, own_names=True)
        self.closing = asyncio.Event()
        self.watchdog = Watchdog("SSE", hub.registry, settings.send_timeout_s)

    async def run(self) -> None:
        """Route events to SSE clients until the hub's fan-out ends or :meth:`close`."""
        try:
            await self.channel.run()
        finally:
            self.close()

    def close(self) -> None:
        """End every stream (each finishes what it is writing) and stop routing."""
        self.closing.set()
        self.channel.close()

    async def watch(self) -> None:
        """End streams whose write stays blocked, or whose token is revoked (:mod:`iothub.bridge.watchdog`)."""
        await self.watchdog.run(self.closing)

    def writer(self, token_id: str) -> _Writer:
        writer: _Writer

        def end(why: Ending) -> None:
            if why is Ending.BLOCKED and writer.consumer is not None:
                self.channel.kick(writer.consumer)
            if writer.request_task is not None:
                writer.ended_by_watchdog = True
                writer.request_task.cancel()

        writer = _Writer(Watched(token_id, end))
        return writer

    async def body(
        self, writer: _Writer, stream_filter: StreamFilter, resume_after: int | None
    ) -> AsyncIterator[bytes]:
        """One client's stream: ``retry:``, then what the core delivers, each batch as one chunk."""
        loop = asyncio.get_running_loop()
        watched = writer.watched
        self.watchdog.watched.add(watched)
        try:
            with self.channel.attach(stream_filter, resume_after) as consumer:
                writer.consumer = consumer
                watched.sending_since = loop.time()
                yield b"retry: %d\n\n" % self.settings.retry_ms
                watched.sending_since = None
                async for delivery in consumer:
                    frames = b"".join(delivery.frames)
                    watched.sending_since = loop.time()
                    yield frames if delivery.gap is None else gap_frame(delivery.gap) + frames
                    watched.sending_since = None
                if consumer.kicked:
                    self.channel.stats.sent += 1
                    watched.sending_since = loop.time()
                    yield KICKED
        finally:
            self.watchdog.watched.discard(watched)


class _EventStream(EventSourceResponse):
    """An SSE response that :meth:`SseHub.watch` may end when its client stops reading."""

    def __init__(self, sse: SseHub, writer: _Writer, body: AsyncIterator[bytes]) -> None:
        super().__init__(body, ping=sse.settings.heartbeat_s, headers={"Cache-Control": "no-cache"})
        self._writer = writer

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        await send(message)  # no cancel scope per write: SseHub.watch covers blocked writes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        self._writer.request_task = task
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            if not self._writer.ended_by_watchdog or task is None:
                raise
            task.uncancel()  # our own doing: the watchdog ended it


STREAM_PARAMETERS = frozenset({"devices", "label", "metrics", "types", "last_event_id", "access_token"})


def filter_of(request: Request) -> StreamFilter:
    """``devices=a,b`` (or ``*``), ``label=k=v`` (repeatable), ``metrics=a,b``, ``types=a,b``."""
    q = request.query_params
    check_known(q.keys(), STREAM_PARAMETERS)

    def listed(name: str) -> list[str]:
        return [item for value in q.getlist(name) for item in value.split(",") if item]

    return StreamFilter.parse(
        listed("devices"), q.getlist("label"), listed("metrics"), listed("types"), names={"labels": "label"}
    )


def resume_point(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise BadSubscription("Last-Event-ID", f"{raw!r} is not an event id (a non-negative integer)", where="")
    return int(raw)


@requires(TokenScope.READ, query=True)
async def stream(request: Request) -> Response:
    sse: SseHub = request.app.state.sse
    stream_filter = filter_of(request)
    resume_after = resume_point(request)
    if resume_after is not None:
        await sse.channel.check_resume(resume_after, "Last-Event-ID")
    if sse.closing.is_set():
        raise Unavailable("the hub is shutting down")
    writer = sse.writer(request.state.token.id)
    return _EventStream(sse, writer, sse.body(writer, stream_filter, resume_after))


routes = [Route("/api/v1/stream", stream, methods=["GET"])]
