"""One consumer of a live channel: its filter, its bounded queue of frames, and what it has lost.

Queue policy: at most ``maxsize`` frames. When full, the **oldest** frame is dropped (a live view
wants the newest data), counted in :attr:`Consumer.dropped` and in its channel's metrics, and the
consumer is told with a :class:`StreamGap` (``missed``, ``after_id``: the last event it got) before
its next frames. Past ``max_dropped`` drops its channel kicks it (:attr:`Consumer.kicked`).

A drop is not a loss while the consumer is replaying from the store: the replay reads on until
the queue's head, wherever drops have moved it, so it delivers those events itself. Nor is the
drop of a frame the replay has already delivered. Neither is counted, announced or held against
the consumer."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from iothub.bridge.streams.filters import StreamFilter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from iothub.bridge.streams.channel import Channel

F = TypeVar("F")

SLOW_CONSUMER = "slow_consumer"
NO_LONGER_STORED = "no longer stored"


@dataclass(frozen=True, slots=True)
class StreamGap:
    """Events a consumer will never get: ``missed`` of them (None: unknown) after event ``after_id``.

    Channels send it without an event id, so a client's resume position stays at the last event it
    really received.
    """

    missed: int | None
    after_id: int | None
    reason: str

    def view(self) -> dict[str, int | str | None]:
        return {"missed": self.missed, "after_id": self.after_id, "reason": self.reason}


@dataclass(slots=True)
class Delivery(Generic[F]):
    """What a consumer writes next: a gap to announce first (or None), then frames in id order."""

    gap: StreamGap | None
    frames: list[F]


@dataclass(eq=False)
class Consumer(Generic[F]):
    """Made by :meth:`Channel.attach`; iterate it for :class:`Delivery` items (replay, then live).

    Iteration ends when the consumer is closed: by its channel closing, by :meth:`Channel.detach`,
    or by being kicked for falling too far behind (then :attr:`kicked` is true).
    """

    channel: Channel[F]
    filter: StreamFilter
    maxsize: int
    resume_after: int | None = None  # replay the store from after this event id first
    items: deque[tuple[int, F]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    missed: int = 0  # lost since the last delivery
    dropped: int = 0  # lost in all
    last_sent: int | None = None  # id of the last event delivered
    replayed_to: int | None = None  # live frames up to this id came through the replay already
    replaying: bool = field(init=False)  # until the replay hands over to the live queue
    closed: bool = False
    kicked: bool = False

    def __post_init__(self) -> None:
        self.replaying = self.resume_after is not None  # from attach on: the replay covers early drops

    def offer(self, event_id: int, frame: F) -> bool:
        """Queue a frame; True when the oldest was dropped to make room and is lost to the consumer."""
        items = self.items
        lost = False
        if len(items) >= self.maxsize:
            oldest, _ = items.popleft()
            skip_to = self.replayed_to
            if not self.replaying and (skip_to is None or oldest > skip_to):
                lost = True
                self.missed += 1
                self.dropped += 1
        items.append((event_id, frame))
        self.wakeup.set()
        return lost

    def hand_over(self, replayed_to: int) -> None:
        """The replay ends: it delivered up to ``replayed_to``; from now on a dropped frame is lost."""
        self.replayed_to = replayed_to
        self.replaying = False

    def lose(self, missed: int) -> None:
        """Events meant for this consumer were lost before it was offered them."""
        self.missed += missed
        self.wakeup.set()

    def take(self) -> Delivery[F]:
        """What is queued now, with a gap first if something was lost; never waits."""
        gap = None
        if self.missed:
            gap = StreamGap(self.missed, self.last_sent, SLOW_CONSUMER)
            self.missed = 0
        frames = []
        items = self.items
        skip_to = self.replayed_to
        while items:
            event_id, frame = items.popleft()
            # An event can reach the replay's store read before its live copy is routed: skip it.
            if skip_to is None or event_id > skip_to:
                frames.append(frame)
                self.last_sent = event_id
        return Delivery(gap, frames)

    async def __aiter__(self) -> AsyncIterator[Delivery[F]]:
        if self.resume_after is not None:
            async for delivery in self.channel.replay(self):
                yield delivery
        while not self.closed:
            if not self.items and not self.missed:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            delivery = self.take()
            if delivery.gap is not None or delivery.frames:
                self.channel.stats.sent += len(delivery.frames) + (delivery.gap is not None)
                yield delivery
