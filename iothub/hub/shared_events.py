"""The event bus of a hub that shares its store with other hub processes (external-broker mode).

Several hub processes write to one SQLite event log; its ids are assigned in the writers' transactions
(:mod:`iothub.hub.store.sqlite`), so every process agrees on them. :class:`SharedEventBus` feeds the
local fan-out from that log alone: a tail task reads the events after the last id it saw and hands them
to the subscribers in id order, whichever process committed them. What this process commits itself
(ingest, alerts) goes to the subscribers directly only when its ids follow the last id delivered, so
no other process's event belongs before it (most of the time with one ingesting process, and it
spares reading back and decoding each event); otherwise :meth:`SharedEventBus.publish` only wakes the
tail, so local and foreign events arrive in one order. The tail skips what was delivered meanwhile
(ids up to :attr:`SharedEventBus.last_id`). A live channel (SSE, WebSocket) therefore sees
exactly the events a client reading the log would, and a client that reconnects to another process
resumes from its last id with nothing missed or repeated.

The tail reads when woken and every ``broker.tail_poll_s`` otherwise, ``PAGE`` events per read.
Each event read is also shown to an observer (:meth:`iothub.hub.core.Hub`'s fleet update), so
presence and latest values learnt by another process reach this one's REST views and commands. The
observer must not block the tail: what it has to await (publishing the commands queued for a device
seen coming online) it returns as a coroutine, which runs as a task in the tail's own task group.
An event the observer fails on is logged and still delivered; :attr:`SharedEventBus.last_id` moves
past a page only once the page has been handed to the subscribers, so a failure never skips events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from iothub.hub.events import EventBus, HubEvent
from iothub.hub.metrics import HubMetrics
from iothub.hub.store.base import Store

log = logging.getLogger(__name__)
PAGE = 5000
Observer = Callable[[HubEvent], Coroutine[Any, Any, None] | None]
"""Sees one event; may return follow-up work, run as a task the tail does not wait for."""


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
        self._tasks: asyncio.TaskGroup | None = None
        self._follow_ups: set[asyncio.Task[None]] = set()

    def publish(self, events: list[HubEvent]) -> None:
        """Events this process committed: delivered now if they are next in the log, else by the tail."""
        if events and events[0].id == self.last_id + 1:  # one transaction's ids are consecutive
            self._deliver(events)
        else:
            self._nudge.set()

    def _deliver(self, events: list[HubEvent]) -> None:
        for event in events:
            self._show(event)
        super().publish(events)
        self.last_id = events[-1].id

    async def start(self) -> None:
        """Begin after the newest stored event (what came before is the store's, for replay)."""
        _, self.last_id = await self._store.event_bounds()

    def stop(self) -> None:
        """Read what is committed by now, then let :meth:`run` return."""
        self._stopping = True
        self._nudge.set()

    async def run(self) -> None:
        """Tail the log until :meth:`stop`; follow-up work still running then is cancelled."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                try:
                    await self._tail()
                finally:
                    self._tasks = None
                    for task in self._follow_ups:
                        task.cancel()
        finally:
            self.finished.set()

    async def _tail(self) -> None:
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

    async def catch_up(self) -> None:
        """Deliver every event committed after :attr:`last_id`."""
        while True:
            page = await self._store.events_after(self.last_id, PAGE)
            fresh = [e for e in page if e.id > self.last_id]  # some may have been delivered meanwhile
            if fresh:
                self._deliver(fresh)
            if len(page) < PAGE:
                return

    def _show(self, event: HubEvent) -> None:
        """Show ``event`` to the observer; start what it returns. A failure is logged, never raised."""
        try:
            follow_up = self._observe(event)
        except Exception:
            log.exception("updating the fleet from event %d (%s of %s) failed", event.id, event.type, event.device_id)
            return
        if follow_up is None:
            return
        if self._tasks is None:  # not tailing (stopped): nothing may run after the tail
            follow_up.close()
            return
        task = self._tasks.create_task(self._logged(follow_up, event), name=f"iothub-follow-up-{event.id}")
        self._follow_ups.add(task)
        task.add_done_callback(self._follow_ups.discard)

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None], event: HubEvent) -> None:
        try:
            await work
        except Exception as exc:
            log.error("acting on event %d (%s of %s) failed: %s", event.id, event.type, event.device_id, exc)
