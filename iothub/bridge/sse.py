"""Server-Sent Events: ``GET /api/v1/stream``, the live event stream for dashboards.

One subscription to the hub's fan-out feeds every SSE client through :class:`SseHub`, which finds
the clients an event is for through an index (by device id, by label, and the clients that want
every device) instead of asking each client. Each event is encoded as an SSE frame once
(:attr:`HubEvent.sse`); a metrics filter costs one more encoding per distinct filter, not per client.
Each client's sender writes everything buffered for it in one chunk.

Resume: ``Last-Event-ID`` (or ``?last_event_id=`` on a first connect) replays what the client missed
from the store, then continues live without a duplicate or a hole (the hand-over is by event id).
Events the store no longer holds are announced with a ``gap`` event (no ``id:``, so the client's
position stays at the last event it really received).

Backpressure: a client holds at most ``sse.queue_size`` frames. A client that falls behind loses the
oldest and is told with a ``gap`` event (``missed``, ``after_id``); one that has lost more than
``sse.max_dropped`` is disconnected (at once if it still reads; within a second of a write blocked for
``sse.send_timeout_s`` if it does not: :meth:`SseHub.watch`). Both are counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from iothub.bridge.auth import requires
from iothub.bridge.errors import BadRequest
from iothub.devices import is_valid_id
from iothub.hub.core import Hub
from iothub.hub.events import EventType, Gap, HubEvent, Subscription
from iothub.hub.registry import Scope as TokenScope
from iothub.hub.settings import SseSettings

log = logging.getLogger(__name__)
LABEL_TTL_S = 2.0
REPLAY_PAGE = 1000


@dataclass(frozen=True)
class StreamFilter:
    devices: frozenset[str] | None  # None: every device
    labels: tuple[tuple[str, str], ...]
    metrics: frozenset[str] | None
    types: frozenset[EventType]

    @classmethod
    def parse(cls, request: Request) -> StreamFilter:
        q = request.query_params
        devices: frozenset[str] | None = None
        raw_devices = [d for value in q.getlist("devices") for d in value.split(",") if d]
        if raw_devices and "*" not in raw_devices:
            bad = [d for d in raw_devices if not is_valid_id(d)]
            if bad:
                raise BadRequest(f"parameter 'devices': {bad[0]!r} is not a device id (or *)")
            devices = frozenset(raw_devices)
        labels = []
        for label in q.getlist("label"):
            key, sep, value = label.partition("=")
            if not sep or not key:
                raise BadRequest(f"parameter 'label': {label!r} is not key=value")
            labels.append((key, value))
        metrics = frozenset(m for value in q.getlist("metrics") for m in value.split(",") if m) or None
        if metrics is not None and not all(is_valid_id(m) for m in metrics):
            raise BadRequest("parameter 'metrics': metric names follow [A-Za-z0-9_.-]{1,64}")
        types = set()
        for value in q.getlist("types"):
            for name in filter(None, value.split(",")):
                try:
                    types.add(EventType(name))
                except ValueError:
                    known = ", ".join(t.value for t in EventType)
                    raise BadRequest(f"parameter 'types': {name!r} is not one of {known}") from None
        return cls(devices, tuple(sorted(labels)), metrics, frozenset(types) or frozenset(EventType))

    def wants(self, event: HubEvent, labels: dict[str, str]) -> bool:
        if event.type not in self.types:
            return False
        if self.devices is not None and event.device_id not in self.devices:
            return False
        return all(labels.get(k) == v for k, v in self.labels)

    def frame(self, event: HubEvent, cache: dict[frozenset[str], bytes | None]) -> bytes | None:
        """This client's frame for ``event``: shared, or trimmed to its metrics (cached per filter)."""
        if self.metrics is None or event.type is not EventType.TELEMETRY:
            return event.sse
        if self.metrics not in cache:
            metrics = {k: v for k, v in event.data.get("metrics", {}).items() if k in self.metrics}
            cache[self.metrics] = (
                event.sse_with(event.json_with({**event.data, "metrics": metrics})) if metrics else None
            )
        return cache[self.metrics]


def gap_frame(missed: int | None, after_id: int | None, reason: str) -> bytes:
    body = json.dumps({"missed": missed, "after_id": after_id, "reason": reason}, separators=(",", ":"))
    return b"event: gap\ndata: %s\n\n" % body.encode()


@dataclass(eq=False)
class SseClient:
    filter: StreamFilter
    maxsize: int
    frames: deque[tuple[int, bytes]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    missed: int = 0  # dropped since the last delivery
    dropped: int = 0
    last_sent: int | None = None
    closed: bool = False
    kicked: bool = False
    sending_since: float | None = None  # a write to this client is in progress since (loop time)
    request_task: asyncio.Task[Any] | None = None  # serves this client's response

    def offer(self, event_id: int, frame: bytes) -> int:
        """Buffer a frame; returns how many were dropped to make room (0 or 1)."""
        lost = 0
        if len(self.frames) >= self.maxsize:
            self.frames.popleft()
            self.missed += 1
            self.dropped += 1
            lost = 1
        self.frames.append((event_id, frame))
        self.wakeup.set()
        return lost


class SseHub:
    """Routes committed events to SSE clients; owns the one fan-out subscription they share."""

    def __init__(self, hub: Hub, settings: SseSettings) -> None:
        self.hub = hub
        self.settings = settings
        self._by_device: defaultdict[str, set[SseClient]] = defaultdict(set)
        self._by_label: defaultdict[tuple[str, str], set[SseClient]] = defaultdict(set)
        self._everyone: set[SseClient] = set()
        self._labels: dict[str, tuple[float, dict[str, str]]] = {}
        self.closing = asyncio.Event()
        self._sub: Subscription | None = None
        self.streams: set[SseClient] = set()  # every open stream, routed to or not
        r = hub.metrics.registry
        self._sent = Counter("iothub_sse_frames_sent", "Event and gap frames written to SSE clients", registry=r)
        self._dropped = Counter("iothub_sse_dropped", "Events dropped from slow SSE clients' queues", registry=r)
        self._kicked = Counter(
            "iothub_sse_disconnected_slow", "SSE clients disconnected for falling behind", registry=r
        )
        hub.metrics.gauge_callback("iothub_sse_clients", "Connected SSE clients", (), lambda: [((), self.count)])

    def clients(self) -> set[SseClient]:
        return set().union(self._everyone, *self._by_device.values(), *self._by_label.values())

    @property
    def count(self) -> int:
        return len(self.clients())

    # -- the index ---------------------------------------------------------------------------------

    def _slots(self, client: SseClient) -> Iterator[set[SseClient]]:
        f = client.filter
        if f.devices is not None:
            yield from (self._by_device[d] for d in f.devices)
        elif f.labels:
            yield self._by_label[f.labels[0]]  # any one label narrows it; the rest is checked per event
        else:
            yield self._everyone

    def add(self, client: SseClient) -> None:
        for slot in self._slots(client):
            slot.add(client)

    def remove(self, client: SseClient) -> None:
        client.closed = True
        client.wakeup.set()
        for slot in self._slots(client):
            slot.discard(client)

    def labels_of(self, device_id: str) -> dict[str, str]:
        now = time.monotonic()
        cached = self._labels.get(device_id)
        if cached is None or cached[0] < now:
            record = self.hub.registry.find_device(device_id)
            cached = (now + LABEL_TTL_S, record.labels if record is not None else {})
            self._labels[device_id] = cached
        return cached[1]

    def route(self, event: HubEvent) -> None:
        labels = self.labels_of(event.device_id) if self._by_label else {}
        # A client sits in one slot an event can reach (its devices, its first label, or everyone),
        # so the groups are walked as they are, without building a set per event.
        groups = [self._everyone, self._by_device.get(event.device_id, ())]
        groups.extend(self._by_label.get(pair, ()) for pair in labels.items())
        cache: dict[frozenset[str], bytes | None] = {}
        too_slow = []
        for client in itertools.chain.from_iterable(groups):
            if client.filter.wants(event, labels if client.filter.labels else {}):
                frame = client.filter.frame(event, cache)
                if frame is not None and client.offer(event.id, frame):
                    self._dropped.inc()
                    if client.dropped > self.settings.max_dropped:
                        too_slow.append(client)
        for client in too_slow:  # after the walk: kicking changes the groups
            self._kick(client)

    def _kick(self, client: SseClient) -> None:
        """Stop feeding a client that lost too much; its stream ends (or its send times out)."""
        self._kicked.inc()
        client.kicked = True
        self.remove(client)

    async def run(self) -> None:
        """Feed every client until the hub's fan-out ends or :meth:`close`."""
        sub = self._sub = self.hub.bus.subscribe("sse")  # the fan-out's queue size: a whole batch fits
        try:
            while not self.closing.is_set():
                batch = await sub.next_batch()
                if not batch:
                    break
                for item in batch:
                    if isinstance(item, Gap):
                        self._announce_gap(item)
                    else:
                        self.route(item)
        finally:
            sub.close()
            self.close()

    def _announce_gap(self, gap: Gap) -> None:
        """The shared subscription itself fell behind: every client has a hole to refill."""
        for client in self.clients():
            client.missed += gap.missed
            client.wakeup.set()

    async def watch(self) -> None:
        """Once a second: end streams whose write has been blocked for ``sse.send_timeout_s``.

        (A timeout around every write would cost a cancel scope per event per client.)
        """
        loop = asyncio.get_running_loop()
        while not self.closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), 1.0)
            now = loop.time()
            for client in list(self.streams):
                since = client.sending_since
                if since is not None and now - since > self.settings.send_timeout_s and client.request_task:
                    if not client.kicked:
                        self._kick(client)
                    client.request_task.cancel()

    def close(self) -> None:
        """End every stream (each finishes what it is writing) and stop routing."""
        self.closing.set()
        if self._sub is not None:
            self._sub.close()
        for client in self.clients():
            self.remove(client)

    # -- one client's stream -----------------------------------------------------------------------

    async def stream(self, client: SseClient, resume_after: int | None) -> AsyncIterator[bytes]:
        yield b"retry: %d\n\n" % self.settings.retry_ms
        replayed_to = resume_after
        if resume_after is not None:
            async for chunk, last in self._replay(client, resume_after):
                replayed_to = last
                yield chunk
        while not client.closed:
            if not client.frames and not client.missed:
                client.wakeup.clear()
                await client.wakeup.wait()
                continue
            chunks: list[bytes] = []
            if client.missed:
                chunks.append(gap_frame(client.missed, client.last_sent, "slow_consumer"))
                client.missed = 0
            while client.frames:
                event_id, frame = client.frames.popleft()
                # A commit can reach the replay query before its fan-out: skip what was replayed.
                if replayed_to is None or event_id > replayed_to:
                    chunks.append(frame)
                    client.last_sent = event_id
            if client.kicked:
                chunks.append(b'event: error\ndata: {"error":"disconnected: this client fell too far behind"}\n\n')
            if chunks:
                self._sent.inc(len(chunks))
                yield b"".join(chunks)

    async def _replay(self, client: SseClient, after: int) -> AsyncIterator[tuple[bytes, int]]:
        store = self.hub.store
        oldest, _ = await store.event_bounds()
        if oldest and after < oldest - 1:
            yield gap_frame(oldest - 1 - after, after, "no longer stored"), oldest - 1
            after = oldest - 1
        replayed = 0
        live_from = client.frames[0][0] if client.frames else None
        while replayed < self.settings.replay_limit:
            page = await store.events_after(after, REPLAY_PAGE)
            if not page:
                return
            cache: dict[frozenset[str], bytes | None] = {}
            frames = []
            for event in page:
                if live_from is not None and event.id >= live_from:
                    break
                labels = self.labels_of(event.device_id) if client.filter.labels else {}
                if client.filter.wants(event, labels):
                    frame = client.filter.frame(event, cache)
                    if frame is not None:
                        frames.append(frame)
                after = event.id
                replayed += 1
                cache.clear()
            if frames:
                client.last_sent = after
                yield b"".join(frames), after
            else:
                yield b"", after
            if len(page) < REPLAY_PAGE or (live_from is not None and after >= live_from - 1):
                return
        yield gap_frame(None, after, f"replay limit of {self.settings.replay_limit} events reached"), after


class _EventStream(EventSourceResponse):
    """An SSE response that :meth:`SseHub.watch` may end when its client stops reading."""

    def __init__(self, sse: SseHub, client: SseClient, body: AsyncIterator[bytes]) -> None:
        super().__init__(body, ping=sse.settings.heartbeat_s, headers={"Cache-Control": "no-cache"})
        self._client = client

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        await send(message)  # no cancel scope per write: SseHub.watch covers blocked writes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        self._client.request_task = task
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            if not self._client.kicked or task is None:
                raise
            task.uncancel()  # our own doing: the client stopped reading
            log.info("closed an SSE stream whose client stopped reading")


def _resume_point(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise BadRequest(f"Last-Event-ID {raw!r} is not an event id (a non-negative integer)")
    return int(raw)


@requires(TokenScope.READ, query=True)
async def stream(request: Request) -> Response:
    sse: SseHub = request.app.state.sse
    try:
        stream_filter = StreamFilter.parse(request)
        resume_after = _resume_point(request)
    except BadRequest as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    if resume_after is not None:
        _, newest = await sse.hub.store.event_bounds()
        if resume_after > newest:
            return JSONResponse(
                {"error": f"Last-Event-ID {resume_after} is ahead of the newest event ({newest})"}, status_code=400
            )
    if sse.closing.is_set():
        return JSONResponse({"error": "the hub is shutting down"}, status_code=503)
    client = SseClient(stream_filter, sse.settings.queue_size)

    async def body() -> AsyncIterator[bytes]:
        sse.add(client)  # before the replay, so nothing committed meanwhile is missed
        sse.streams.add(client)
        loop = asyncio.get_running_loop()
        try:
            async for chunk in sse.stream(client, resume_after):
                if chunk:
                    client.sending_since = loop.time()
                    yield chunk
                    client.sending_since = None
        finally:
            sse.streams.discard(client)
            sse.remove(client)

    return _EventStream(sse, client, body())


routes = [Route("/api/v1/stream", stream, methods=["GET"])]
