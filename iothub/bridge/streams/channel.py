"""A live channel (SSE, WebSocket, gRPC): one fan-out subscription, an index of consumers, resume."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from iothub.bridge.streams.consumer import NO_LONGER_STORED, Consumer, Delivery, StreamGap
from iothub.bridge.streams.filters import BadSubscription, StreamFilter
from iothub.hub.events import EventBus, EventType, Gap, HubEvent, Subscription
from iothub.hub.labels import LabelDirectory
from iothub.hub.store import Store

log = logging.getLogger(__name__)
F = TypeVar("F")
K = TypeVar("K")
C = TypeVar("C")

Encode = Callable[[HubEvent, bytes], F]
"""A channel's frame for an event, given the event's JSON body (whole, or trimmed to some metrics)."""


@dataclass(frozen=True, slots=True)
class Limits:
    queue_size: int = 1000  # frames per consumer before the oldest drop
    max_dropped: int = 10_000  # frames a consumer may lose before it is kicked
    replay_limit: int = 100_000  # most events read from the store for one resume
    replay_page: int = 1000  # events per store read while replaying


@dataclass(slots=True)
class ChannelStats:
    """Plain counters (read at scrape time by :class:`StreamMetrics`): no lock on the hot path."""

    sent: int = 0  # event and gap frames handed to consumers' writers
    dropped: int = 0  # frames dropped from full consumer queues
    kicked: int = 0  # consumers disconnected for falling behind


class _Frames(Generic[F]):
    """One event's frames: built once for every consumer, and once per distinct metrics filter."""

    __slots__ = ("_encode", "_event", "_full", "_trimmed")

    def __init__(self, encode: Encode[F], event: HubEvent) -> None:
        self._encode = encode
        self._event = event
        self._full: F | None = None
        self._trimmed: dict[frozenset[str], F | None] | None = None

    def for_filter(self, metrics: frozenset[str] | None) -> F | None:
        """The frame for a consumer wanting ``metrics``; None when the event has none of them."""
        event = self._event
        if metrics is None or event.type is not EventType.TELEMETRY:
            if self._full is None:
                self._full = self._encode(event, event.json)
            return self._full
        if self._trimmed is None:
            self._trimmed = {}
        elif metrics in self._trimmed:
            return self._trimmed[metrics]
        kept = {k: v for k, v in event.data.get("metrics", {}).items() if k in metrics}
        frame = self._encode(event, event.json_with({**event.data, "metrics": kept})) if kept else None
        self._trimmed[metrics] = frame
        return frame


class Channel(Generic[F]):
    """Routes committed events to this channel's consumers; see :mod:`iothub.bridge.streams`."""

    def __init__(
        self, name: str, bus: EventBus, store: Store, labels: LabelDirectory, encode: Encode[F], limits: Limits
    ) -> None:
        self.name = name
        self.limits = limits
        self.stats = ChannelStats()
        self.consumers: set[Consumer[F]] = set()
        self._bus = bus
        self._store = store
        self._labels = labels
        self._encode = encode
        # The index: a slot exists only while a consumer sits in it (detach deletes emptied slots).
        self._by_device: dict[str, set[Consumer[F]]] = {}
        self._by_label: dict[tuple[str, str], set[Consumer[F]]] = {}
        self._everyone: set[Consumer[F]] = set()
        self._sub: Subscription | None = None
        self.closed = False

    # -- consumers ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def attach(self, stream_filter: StreamFilter, resume_after: int | None = None) -> Iterator[Consumer[F]]:
        """A consumer routed to from now on (so nothing committed during its replay is missed)."""
        consumer = self.open(stream_filter, resume_after)
        try:
            yield consumer
        finally:
            self.detach(consumer)

    def open(self, stream_filter: StreamFilter, resume_after: int | None = None) -> Consumer[F]:
        """:meth:`attach` without the context: the caller must :meth:`detach` it."""
        consumer = Consumer(self, stream_filter, self.limits.queue_size, resume_after)
        if self.closed:
            consumer.closed = True
        else:
            self.consumers.add(consumer)
            self._index(consumer, add=True)
        return consumer

    def detach(self, consumer: Consumer[F]) -> None:
        """Stop routing to ``consumer``; its iteration ends."""
        consumer.closed = True
        consumer.wakeup.set()
        if consumer in self.consumers:
            self.consumers.discard(consumer)
            self._index(consumer, add=False)

    def kick(self, consumer: Consumer[F]) -> None:
        """Disconnect a consumer that lost too much (or whose writes are blocked); counted."""
        if not consumer.kicked:
            consumer.kicked = True
            self.stats.kicked += 1
        self.detach(consumer)

    async def check_resume(self, after: int, field: str) -> None:
        """Refuse a resume point beyond the newest stored event (``field`` names it in the error)."""
        _, newest = await self._store.event_bounds()
        if after > newest:
            raise BadSubscription(field, f"{after} is ahead of the newest event ({newest})", where="")

    def _index(self, consumer: Consumer[F], add: bool) -> None:
        """Put ``consumer`` in (or take it out of) the one index slot an event can reach it through:
        each of its devices, else its first label (the rest is checked per event), else everyone."""
        f = consumer.filter
        if f.devices is not None:
            for device_id in f.devices:
                _slot_update(self._by_device, device_id, consumer, add)
        elif f.labels:
            _slot_update(self._by_label, f.labels[0], consumer, add)
        elif add:
            self._everyone.add(consumer)
        else:
            self._everyone.discard(consumer)

    # -- live --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Feed every consumer until the hub's fan-out ends or :meth:`close`."""
        sub = self._sub = self._bus.subscribe(self.name)  # before any wait: a resume must not miss a commit
        try:
            await self._labels.load()
            while not self.closed:
                batch = await sub.next_batch()
                if not batch:
                    break
                for item in batch:
                    if isinstance(item, Gap):
                        for consumer in list(self.consumers):  # the shared subscription itself fell behind
                            consumer.lose(item.missed)
                    else:
                        self.route(item)
        finally:
            sub.close()
            self.close()

    def route(self, event: HubEvent) -> None:
        if not self.consumers:  # a channel nobody uses costs nothing per event
            return
        # Always looked up (one dict lookup): a consumer in a device slot may filter on labels too.
        labels = self._labels.get(event.device_id)
        # A consumer sits in exactly one slot an event can reach (its devices, its first label, or
        # everyone), so the groups are walked as they are, without building a set per event.
        groups = [self._everyone, self._by_device.get(event.device_id, ())]
        if labels and self._by_label:
            groups.extend(self._by_label.get(pair, ()) for pair in labels.items())
        frames = _Frames(self._encode, event)
        too_slow = []
        for consumer in itertools.chain.from_iterable(groups):
            f = consumer.filter
            if f.wants(event, labels):
                frame = frames.for_filter(f.metrics)
                if frame is not None and consumer.offer(event.id, frame):
                    self.stats.dropped += 1
                    if consumer.dropped > self.limits.max_dropped:
                        too_slow.append(consumer)
        for consumer in too_slow:  # after the walk: kicking changes the groups
            self.kick(consumer)

    def close(self) -> None:
        """Stop routing and end every consumer's iteration."""
        self.closed = True
        if self._sub is not None:
            self._sub.close()
        for consumer in list(self.consumers):
            self.detach(consumer)

    # -- resume ------------------------------------------------------------------------------------

    async def replay(self, consumer: Consumer[F]) -> AsyncIterator[Delivery[F]]:
        """What ``consumer`` missed after ``consumer.resume_after``, from the store, in pages.

        Reads until the head of its live queue, looked at again after every store read: frames the
        queue drops meanwhile move the head on, and the replay delivers them instead. The hand-over
        (:meth:`Consumer.hand_over`) follows the last look at the head with no await in between, so
        a drop after it counts as lost; :meth:`Consumer.take` skips live frames the replay already
        gave. Announces a gap for events the store no longer holds (event ids are contiguous, so a
        page starting later than asked is a hole) and at the replay limit.
        """
        after = consumer.resume_after
        if after is None:
            return
        limits = self.limits
        replayed = 0
        while not consumer.closed:
            if replayed >= limits.replay_limit:
                consumer.hand_over(after)
                self.stats.sent += 1
                yield Delivery(StreamGap(None, after, f"replay limit of {limits.replay_limit} events reached"), [])
                return
            want = min(limits.replay_page, limits.replay_limit - replayed)
            page = await self._store.events_after(after, want)
            live_from = consumer.items[0][0] if consumer.items else None  # after the read: drops moved it
            gap: StreamGap | None = None
            if page and page[0].id > after + 1:
                stored_from = page[0].id if live_from is None else min(page[0].id, live_from)
                if stored_from > after + 1:
                    gap = StreamGap(stored_from - 1 - after, after, NO_LONGER_STORED)
                    after = stored_from - 1
            frames = []
            for event in page:
                if live_from is not None and event.id >= live_from:
                    break
                f = consumer.filter
                if f.wants(event, self._labels.get(event.device_id)):
                    frame = _Frames(self._encode, event).for_filter(f.metrics)
                    if frame is not None:
                        frames.append(frame)
                        consumer.last_sent = event.id
                after = event.id
                replayed += 1
            # Done when the live queue begins right after; with nothing queued, when the store had no
            # more (anything committed since reaches the queue, and its ids are past this page).
            done = after >= live_from - 1 if live_from is not None else len(page) < want
            if done:
                consumer.hand_over(after)
            else:
                consumer.replayed_to = after
            if gap is not None or frames:
                self.stats.sent += len(frames) + (gap is not None)
                yield Delivery(gap, frames)
            if done:
                return


def _slot_update(index: dict[K, set[C]], key: K, consumer: C, add: bool) -> None:
    """Add ``consumer`` to the slot ``index[key]`` (made if missing), or remove it (deleting the slot
    once empty, so an index of device ids that come and go does not grow for ever)."""
    slot = index.get(key)
    if add:
        if slot is None:
            slot = index[key] = set()
        slot.add(consumer)
    elif slot is not None:
        slot.discard(consumer)
        if not slot:
            del index[key]
