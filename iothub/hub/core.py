"""The hub core: store, fleet, ingest, fan-out and the broker, as one async context manager.

The broker is the embedded one, or with ``broker.url`` an external one (:mod:`iothub.hub.external`);
then the event fan-out reads the store's shared event log (:mod:`iothub.hub.shared_events`), so
several hub processes agree on every event id. ``components`` names what this process runs of
:data:`HUB_COMPONENTS` (``ingest``: the shared subscription to device messages; ``alerts``: the
evaluator); a subset needs an external broker.

Entering opens the store, restores the fleet, starts the alert evaluator and ingest and binds the
broker. Leaving stops in the order that loses nothing: announce ``hub/status`` offline, close the
broker (no more input), let ingest drain and commit what is queued, let the evaluator judge it, end
the fan-out, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

from iothub.hub.alerts import AlertEvaluator
from iothub.hub.auth import Authenticator
from iothub.hub.commands import Commands
from iothub.hub.embedded import EmbeddedBroker
from iothub.hub.events import EventBus, EventType, HubEvent
from iothub.hub.external import BrokerUnavailable, ExternalBroker
from iothub.hub.fleet import Fleet
from iothub.hub.ingest import Ingest, now_ms
from iothub.hub.labels import LabelDirectory
from iothub.hub.metrics import HubMetrics
from iothub.hub.presence import PresenceReason
from iothub.hub.registry import Registry, Scope
from iothub.hub.rulebook import Rulebook
from iothub.hub.settings import Settings
from iothub.hub.shared_events import SharedEventBus
from iothub.hub.store import SqliteStore, Store
from iothub.hub.twin import Twins
from iothub.hub.webhook_admin import WebhookAdmin

log = logging.getLogger(__name__)
HUB_STATUS_TOPIC = "hub/status"
REGISTRY_POLL_S = 1.0
HUB_COMPONENTS = frozenset({"ingest", "alerts"})
TAIL_DRAIN_S = 5.0


class Hub:
    """Builds every part with what it needs, in dependency order.

    Commands and twins publish through the hub (:meth:`publish`, a
    :class:`~iothub.hub.commands.Publisher`), and ingest reports committed messages to it
    (:meth:`_committed`); both reach the broker, which is built last because it feeds ingest.
    """

    def __init__(self, settings: Settings, components: frozenset[str] = HUB_COMPONENTS) -> None:
        self.settings = settings
        self.components = components
        self.external = settings.broker.url is not None
        self.metrics = HubMetrics()
        self.fleet = Fleet(settings.ingest.seq_window)
        self.outbox_nudge = asyncio.Event()  # set when deliveries became due (queued, redelivered, enabled)
        events_db = settings.data_dir / "iothub.db"
        self.store: Store = SqliteStore(
            events_db, settings.store.event_retention, shared=self.external, on_outbox=self.outbox_nudge.set
        )
        if settings.store.backend == "influxdb":
            # Imported here: influxdb-client and aiohttp take ~35 MiB and 0.15 s, which a SQLite hub never uses.
            from iothub.hub.store.influx import InfluxStore

            self.store = InfluxStore(settings.store.influx, self.store, self._labels_of)
        self.bus: EventBus = EventBus(self.metrics, settings.fanout.queue_size)
        if self.external:
            self.bus = SharedEventBus(
                self.metrics, settings.fanout.queue_size, self.store, settings.broker.tail_poll_s, self._observe
            )
        self.registry = Registry(settings.data_dir / "registry.db")
        self.labels = LabelDirectory(self.registry)  # every device's labels in memory, for routing events
        self.commands = Commands(self.registry, self.fleet, self)
        self.twins = Twins(self.registry, self)
        self.ingest = Ingest(
            settings.ingest, self.store, self.fleet, self.bus, self.metrics,
            replies=self.commands, reports=self.twins, on_committed=self._committed,
            shared=self.external,
        )  # fmt: skip
        self.webhooks = WebhookAdmin(settings.data_dir / "iothub.db")
        self.rulebook = Rulebook(settings.data_dir / "iothub.db", settings.rules)
        self.alerts = AlertEvaluator(
            self.rulebook, self.store, self.bus, self.fleet, self.labels, self.publish, self.metrics,
            settings.alerts.queue_size,
        )  # fmt: skip
        self.auth = Authenticator(self.registry, settings.mqtt.allow_anonymous)
        self.broker: EmbeddedBroker | ExternalBroker
        if settings.broker.url is not None:
            offline = json.dumps({"online": False, "reason": "hub_lost"}).encode()
            self.broker = ExternalBroker(
                settings.broker, self.ingest, ingest="ingest" in components, will=(HUB_STATUS_TOPIC, offline)
            )
        else:
            self.broker = EmbeddedBroker(
                settings.mqtt, self.auth, self.ingest, self.commands.on_subscribed, self.metrics,
                settings.data_dir / "broker.db",
            )  # fmt: skip
        self.first_token: str | None = None  # an admin token made on first start, to print once
        self._stack = AsyncExitStack()

    @property
    def ports(self) -> dict[str, int]:
        return dict(self.broker.ports)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish as the hub: what commands, twins and the hub's own status go out through."""
        await self.broker.publish(topic, payload, qos=qos, retain=retain)

    def subscribes(self, client_id: str, topic: str) -> bool:
        """Whether a client would receive a publish on ``topic`` now (commands wait until it would)."""
        return self.broker.subscribes(client_id, topic)

    def _committed(self, ticket: int) -> None:
        """Ingest committed every message up to ``ticket``: the broker may acknowledge them."""
        self.broker.committed(ticket)

    async def __aenter__(self) -> Hub:
        async with AsyncExitStack() as stack:
            stack.callback(self.registry.close)
            await self.store.open()
            stack.push_async_callback(self.store.close)
            stack.callback(self.rulebook.close)
            stack.callback(self.webhooks.close)
            for stored in await self.store.load_devices():
                self.fleet.restore(stored)
            # Unwound in reverse: hub/status offline, broker closed (no more input), ingest stopped
            # and drained (the task group waits for it), and only then the fan-out closed.
            stack.callback(self.bus.close)
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            if isinstance(self.bus, SharedEventBus):
                await self.bus.start()
                tasks.create_task(self.bus.run(), name="iothub-event-tail")
            if "alerts" in self.components:
                tasks.create_task(self.alerts.run(), name="iothub-alerts")
            tasks.create_task(self._ingest_then_alerts(), name="iothub-ingest")
            stack.callback(self.ingest.stop)
            await stack.enter_async_context(self.broker)
            stack.push_async_callback(self._announce, online=False)
            if self.external:  # a broker with a backlog for this hub answers our publishes after it
                tasks.create_task(self._announce_start(), name="iothub-announce")
            else:
                await self._announce_start()
            stopped = asyncio.Event()
            stack.callback(stopped.set)
            tasks.create_task(self._watch_registry(stopped), name="iothub-registry-watch")
            self._stack = stack.pop_all()
        registered = await asyncio.to_thread(self.registry.device_count)
        log.info(
            "hub started: %d devices registered, %d seen in earlier runs; data in %s",
            registered, len(self.fleet), self.settings.data_dir,
        )  # fmt: skip
        return self

    async def _ingest_then_alerts(self) -> None:
        """Run ingest; once it has drained, the evaluator judges what is left and stops."""
        try:
            await self.ingest.run()
        finally:
            if isinstance(self.bus, SharedEventBus):
                self.bus.stop()  # the tail delivers what ingest committed last (to the evaluator too), then ends
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.bus.finished.wait(), TAIL_DRAIN_S)
            self.alerts.stop()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)
        log.info("hub stopped")

    def make_first_token(self) -> str | None:
        """On the first start (no API token at all), make an admin token and return it, to print once.

        Called only once everything listens, so a start that fails (a busy port) does not use it up
        unseen.
        """
        if self.registry.tokens():
            return None
        _, self.first_token = self.registry.create_token(Scope.ADMIN, "first-start")
        return self.first_token

    async def _watch_registry(self, stopped: asyncio.Event) -> None:
        """Apply registry changes made anywhere (REST, another process): reload the labels directory,
        disconnect disabled devices. The first round, at start, always finds a change."""
        while not stopped.is_set():
            if await asyncio.to_thread(self.registry.changed):
                await self.labels.refresh()
                await self.enforce_registry()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), REGISTRY_POLL_S)

    async def enforce_registry(self) -> None:
        for device_id in self.broker.connected_devices():
            device = await asyncio.to_thread(self.registry.find_device, device_id)
            if device is None or not device.enabled:
                log.info("disconnecting device %s: %s", device_id, "removed" if device is None else "disabled")
                await self.broker.disconnect(device_id, PresenceReason.DISABLED)

    def _labels_of(self, device_id: str) -> dict[str, str]:
        return dict(self.labels.get(device_id))

    def _observe(self, event: HubEvent) -> Coroutine[Any, Any, None] | None:
        """An event read from the shared log (any process's): presence and latest values reach the
        fleet; a device seen coming online gets the commands queued for it (returned, for the tail to
        run without waiting on the broker)."""
        if event.type is EventType.TELEMETRY:
            state = self.fleet.get(event.device_id) or self.fleet.touch(event.device_id, event.ts)
            state.last_seen = max(state.last_seen, event.ts)
            for metric, value in event.data.get("metrics", {}).items():
                current = state.latest.get(metric)
                if current is None or current[0] <= event.ts:
                    state.latest[metric] = (event.ts, value)
        elif event.type is EventType.STATUS:
            state = self.fleet.get(event.device_id) or self.fleet.touch(event.device_id, event.ts)
            online = bool(event.data.get("online"))
            try:
                reason = PresenceReason(event.data.get("reason", PresenceReason.UNKNOWN.value))
            except ValueError:  # written by a newer hub version, say
                reason = PresenceReason.UNKNOWN
            if state.set_presence(online, reason, event.ts, event.data.get("detail")) and online:
                return self.commands.on_subscribed(event.device_id, f"devices/{event.device_id}/commands/+")
        return None

    async def _announce_start(self) -> None:
        """``hub/status`` online, and every desired twin document again (retained)."""
        try:
            await self._announce(online=True)
            await self.twins.announce_all(self.settings.ingest.max_payload_bytes)
        except BrokerUnavailable as exc:
            if not self.external:
                raise
            log.warning("could not announce the hub's start: %s", exc)

    async def _announce(self, *, online: bool) -> None:
        if not online and isinstance(self.broker, ExternalBroker) and not self.broker.connected:
            log.warning("not announcing hub/status offline: the broker is not reachable (the Last Will says it)")
            return
        payload = json.dumps({"online": online, "ts": now_ms()}).encode()
        await self.publish(HUB_STATUS_TOPIC, payload, qos=1, retain=True)
