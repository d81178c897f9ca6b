"""The event bus of a hub that shares its store with other hub processes (external-broker mode).

Several hub processes write to one SQLite event log; its ids are assigned in the writers' transactions
(:mod:`iothub.hub.store.sqlite`), so every process agrees on them. :class:`SharedEventBus` feeds the
local fan-out from that log alone: a tail task reads the events after the last id it saw and hands them
to the subscribers in id order, whichever process committed them. What this process commits itself
(ingest, alerts) does not go to the subscribers directly; :meth:`SharedEventBus.publish` only wakes the
tail, so local and foreign events arrive in one order. A live channel (SSE, WebSocket) therefore sees
exactly the events a client reading the log would, and a client that reconnects to another process
resumes from its last id with nothing missed or repeated.

The tail reads when woken and every ``broker.tail_poll_s`` otherwise, ``PAGE`` events per read.
Each event read is also shown to an observer (:meth:`iothub.hub.core.Hub`'s fleet update), so
presence and latest values learnt by another process reach this one's REST views and commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from iothub.hub.events import EventBus, HubEvent
from iothub.hub.metrics import HubMetrics
from iothub.hub.store.base import Store

log = logging.getLogger(__name__)
PAGE = 5000
Observer = Callable[[list[HubEvent]], Awaitable[None]]


class SharedEventBus(EventBus):
    def __init__(
        self, metrics: HubMetrics, default_maxsize: int, store: Store, poll_s: float, observe: Observer
    ) -> None:
        super().__init__(metrics, default_maxsize)
        self._store = store
        self._poll_s = poll_s
        self._observe = observe
        self._nudge = asyncio.Event()
        self._stopping = False
        self.finished = asyncio.Event()  # set once :meth:`run` has returned
        self.last_id = 0

    def publish(self, events: list[HubEvent]) -> None:
        """Events this process committed: the tail delivers them, in order with everyone else's."""
        self._nudge.set()

    async def start(self) -> None:
        """Begin after the newest stored event (what came before is the store's, for replay)."""
        _, self.last_id = await self._store.event_bounds()

    def stop(self) -> None:
        """Read what is committed by now, then let :meth:`run` return."""
        self._stopping = True
        self._nudge.set()

    async def run(self) -> None:
        try:
            while True:
                stopping = self._stopping
                try:
                    await self.catch_up()
                except Exception as exc:  # a store that fails now may answer at the next poll
                    log.error("reading the shared event log after id %d failed: %s", self.last_id, exc)
                if stopping:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._nudge.wait(), self._poll_s)
                self._nudge.clear()
        finally:
            self.finished.set()

    async def catch_up(self) -> None:
        """Deliver every event committed after :attr:`last_id`."""
        while True:
            page = await self._store.events_after(self.last_id, PAGE)
            if not page:
                return
            self.last_id = page[-1].id
            await self._observe(page)
            super().publish(page)
            if len(page) < PAGE:
                return
