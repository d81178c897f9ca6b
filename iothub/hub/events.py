"""Hub events and the in-process fan-out every bridge subscribes to.

An event gets its id when the store commits it, so ids are monotonic and any consumer can resume
from the store. :class:`EventBus` hands each event to every :class:`Subscription` without awaiting.

Backpressure: each subscription holds at most ``maxsize`` events. When a consumer falls behind, the
**oldest** buffered events are dropped (newer data is worth more to a live view); the drop is counted
in ``iothub_fanout_dropped{consumer=...}`` and signalled to the consumer as a :class:`Gap` in its
stream, which says how many events it missed and after which id, so it can refill from the store.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from iothub.hub.metrics import HubMetrics


class EventType(enum.StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    COMMAND_RESULT = "command_result"
    ALERT = "alert"


@dataclass(frozen=True)
class HubEvent:
    id: int
    type: EventType
    ts: int  # epoch ms the event describes
    device_id: str
    data: dict[str, Any]

    @cached_property
    def json(self) -> bytes:
        """The event serialised once, shared by every consumer."""
        return self.json_with(self.data)

    def json_with(self, data: dict[str, Any]) -> bytes:
        """The event serialised with other data (a bridge trimming it to some metrics, say)."""
        body = {"id": self.id, "type": self.type.value, "ts": self.ts, "device_id": self.device_id, **data}
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Gap:
    """``missed`` events were dropped from this consumer's queue after event ``after_id``."""

    missed: int
    after_id: int | None


@dataclass(eq=False)
class Subscription:
    """One consumer's bounded view of the event stream (policy: drop oldest, signal a :class:`Gap`)."""

    name: str
    maxsize: int
    _bus: EventBus
    _buffer: deque[HubEvent] = field(default_factory=deque)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _missed: int = 0  # dropped since the consumer last read
    _last_read: int | None = None
    dropped: int = 0
    closed: bool = False

    def offer(self, event: HubEvent) -> None:
        if len(self._buffer) >= self.maxsize:
            self._buffer.popleft()
            self._missed += 1
            self.dropped += 1
            self._bus.metrics.fanout_dropped.labels(self.name).inc()
        self._buffer.append(event)
        self._wakeup.set()

    @property
    def depth(self) -> int:
        return len(self._buffer)

    def drain(self, limit: int | None = None) -> list[HubEvent | Gap]:
        """Take what is buffered now, without waiting (a :class:`Gap` first if events were lost)."""
        out: list[HubEvent | Gap] = []
        if self._missed:
            out.append(Gap(self._missed, self._last_read))
            self._missed = 0
        n = len(self._buffer) if limit is None else min(limit, len(self._buffer))
        out.extend(self._buffer.popleft() for _ in range(n))
        for item in reversed(out):
            if isinstance(item, HubEvent):
                self._last_read = item.id
                break
        if not self._buffer:
            self._wakeup.clear()
        return out

    async def next_batch(self, limit: int | None = None) -> list[HubEvent | Gap]:
        """Wait until something is buffered, then :meth:`drain`; ``[]`` once closed."""
        while not self._buffer and not self._missed:
            if self.closed:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        return self.drain(limit)

    async def __aiter__(self) -> AsyncIterator[HubEvent | Gap]:
        while batch := await self.next_batch():
            for item in batch:
                yield item

    def close(self) -> None:
        self.closed = True
        self._bus._remove(self)
        self._wakeup.set()


class EventBus:
    """Fan-out of committed events to every subscriber; ``publish`` never blocks."""

    def __init__(self, metrics: HubMetrics, default_maxsize: int) -> None:
        self.metrics = metrics
        self._default_maxsize = default_maxsize
        self._subs: list[Subscription] = []
        metrics.gauge_callback(
            "iothub_fanout_queue_depth",
            "Events waiting in each consumer's queue",
            ("consumer",),
            self._depths,
        )

    def subscribe(self, name: str, maxsize: int | None = None) -> Subscription:
        sub = Subscription(name, maxsize or self._default_maxsize, self)
        self._subs.append(sub)
        return sub

    def publish(self, events: list[HubEvent]) -> None:
        for sub in self._subs:
            for event in events:
                sub.offer(event)
        self.metrics.events_published.inc(len(events))

    def close(self) -> None:
        """End every subscription (their iterators finish after what is buffered)."""
        for sub in list(self._subs):
            sub.close()

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def _depths(self) -> Iterator[tuple[tuple[str, ...], float]]:
        for sub in self._subs:
            yield (sub.name,), float(sub.depth)
