"""Open streams the hub ends from outside: a write blocked too long, or an API token revoked since.

Each live channel (SSE, WebSocket, gRPC) keeps one :class:`Watchdog` and registers a :class:`Watched`
per open connection. The connection marks its writes (``sending_since``: set before, cleared after:
two attribute stores, cheaper than a timeout around every write); once a second the watchdog ends a
connection whose write has been blocked for ``send_timeout_s``, and every connection opened with a
token revoked since (here, or by another process sharing the registry).

What the two-way channels (WebSocket, gRPC) share is here too: :class:`WatchedChannel`, a stream
core channel with its watchdog and how it closes, and :class:`WatchedWriter`, one connection's
writes taken in turn (``async with writer.turn(): ...``) and marked for the watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from iothub.bridge.streams import Channel, Encode, Limits, StreamMetrics
from iothub.hub.core import Hub
from iothub.hub.registry import Registry

log = logging.getLogger(__name__)


class Ending(enum.Enum):
    BLOCKED = "its client stopped reading"
    REVOKED = "its API token was revoked"


@dataclass(eq=False)
class Watched:
    """One open connection: its token, whether a write is in progress, and how to end it."""

    token_id: str | None
    end: Callable[[Ending], None]  # called at most once
    sending_since: float | None = None  # loop time a write in progress began
    ended: bool = False


class Watchdog:
    def __init__(self, channel: str, registry: Registry, send_timeout_s: float) -> None:
        self.channel = channel
        self.registry = registry
        self.send_timeout_s = send_timeout_s
        self.watched: set[Watched] = set()

    async def run(self, closing: asyncio.Event) -> None:
        """Look once a second until ``closing`` is set."""
        loop = asyncio.get_running_loop()
        while not closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), 1.0)
            revoked = await asyncio.to_thread(self._revoked_tokens) if self.watched else set()
            now = loop.time()
            for watched in list(self.watched):
                since = watched.sending_since
                if watched.token_id in revoked:
                    self._end(watched, Ending.REVOKED)
                elif since is not None and now - since > self.send_timeout_s:
                    self._end(watched, Ending.BLOCKED)

    def _end(self, watched: Watched, why: Ending) -> None:
        self.watched.discard(watched)
        if not watched.ended:
            watched.ended = True
            log.info("ending a %s connection: %s", self.channel, why.value)
            watched.end(why)

    def _revoked_tokens(self) -> set[str]:
        return {token.id for token in self.registry.tokens() if token.revoked is not None}


@dataclass(eq=False)
class WatchedWriter:
    """One connection's writes, one at a time. The watchdog sees a write as in progress from the
    moment one waits for its turn, so a client that stops reading is found whatever was being
    written. ``lock`` alone serialises a write the watchdog need not see (a close frame)."""

    watched: Watched | None = None  # set once the connection is registered with the watchdog
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _writers: int = 0  # writes waiting or in progress

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        watched = self.watched
        loop = asyncio.get_running_loop()
        self._writers += 1
        if watched is not None and watched.sending_since is None:
            watched.sending_since = loop.time()
        try:
            async with self.lock:
                yield
        finally:
            self._writers -= 1
            if watched is not None:  # progress: the next writer's wait starts now
                watched.sending_since = loop.time() if self._writers else None


class WatchedChannel:
    """A two-way channel's part of the stream core (counted in ``iothub_stream_*{channel=name}``),
    its :class:`Watchdog`, and its end: :meth:`run` routes events, :meth:`watch` runs the watchdog,
    :meth:`close` (once the hub stops, or the fan-out ends) calls ``on_close`` and stops routing."""

    def __init__(self, hub: Hub, name: str, label: str, encode: Encode[bytes], limits: Limits, send_timeout_s: float):
        self.channel: Channel[bytes] = Channel(name, hub.bus, hub.store, hub.labels, encode, limits)
        StreamMetrics.of(hub.metrics.registry).add(self.channel)
        self.watchdog = Watchdog(label, hub.registry, send_timeout_s)
        self.closing = asyncio.Event()
        self.on_close: list[Callable[[], None]] = []  # what else ends at close (the open connections)

    async def run(self) -> None:
        """Route events until the hub's fan-out ends or :meth:`close`."""
        try:
            await self.channel.run()
        finally:
            self.close()

    async def watch(self) -> None:
        await self.watchdog.run(self.closing)

    def close(self) -> None:
        self.closing.set()
        for callback in self.on_close:
            callback()
        self.channel.close()
