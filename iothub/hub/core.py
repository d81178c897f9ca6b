"""The hub core: store, fleet, ingest, fan-out and the embedded broker, as one async context manager.

Entering opens the store, restores the fleet, starts ingest and binds the broker. Leaving stops in the
order that loses nothing: announce ``hub/status`` offline, close the broker (no more input), let ingest
drain and commit what is queued, end the fan-out, close the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AsyncExitStack
from types import TracebackType

from iothub.hub.broker import EmbeddedBroker
from iothub.hub.events import EventBus
from iothub.hub.fleet import Fleet
from iothub.hub.ingest import Ingest, now_ms
from iothub.hub.metrics import HubMetrics
from iothub.hub.settings import Settings
from iothub.hub.store import SqliteStore, Store

log = logging.getLogger(__name__)
HUB_STATUS_TOPIC = "hub/status"


class Hub:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = HubMetrics()
        self.fleet = Fleet(settings.ingest.seq_window)
        self.bus = EventBus(self.metrics, settings.fanout.queue_size)
        self.store: Store = SqliteStore(settings.data_dir / "iothub.db", settings.store.event_retention)
        self.ingest = Ingest(settings.ingest, self.store, self.fleet, self.bus, self.metrics)
        self.broker = EmbeddedBroker(settings.mqtt, self.ingest)
        self._stack = AsyncExitStack()

    @property
    def ports(self) -> dict[str, int]:
        return dict(self.broker.ports)

    async def __aenter__(self) -> Hub:
        async with AsyncExitStack() as stack:
            await self.store.open()
            stack.push_async_callback(self.store.close)
            for stored in await self.store.load_devices():
                self.fleet.restore(stored)
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            tasks.create_task(self.ingest.run(), name="iothub-ingest")
            stack.callback(self.bus.close)
            stack.callback(self.ingest.stop)
            await stack.enter_async_context(self.broker)
            stack.push_async_callback(self._announce, online=False)
            await self._announce(online=True)
            self._stack = stack.pop_all()
        log.info("hub started with %d known devices; data in %s", len(self.fleet), self.settings.data_dir)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)
        log.info("hub stopped")

    async def _announce(self, *, online: bool) -> None:
        payload = json.dumps({"online": online, "ts": now_ms()}).encode()
        await self.broker.publish(HUB_STATUS_TOPIC, payload, qos=1, retain=True)
