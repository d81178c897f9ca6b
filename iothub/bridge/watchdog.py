"""Open streams the hub ends from outside: a write blocked too long, or an API token revoked since.

Each live channel (SSE, WebSocket) keeps one :class:`Watchdog` and registers a :class:`Watched` per
open connection. The connection marks its writes (``sending_since``: set before, cleared after: two
attribute stores, cheaper than a timeout around every write); once a second the watchdog ends a
connection whose write has been blocked for ``send_timeout_s``, and every connection opened with a
token revoked since (here, or by another process sharing the registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

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
