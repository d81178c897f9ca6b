"""Ingest: one ordered stream from the broker tap to the store and the fan-out.

The tap (:meth:`Ingest.on_publish`, ``on_connect``, ``on_disconnect``) only appends to a queue, so
the broker never waits for us. Connection events come for devices only (and anonymous clients in
development mode; never service accounts): a device's presence starts at its CONNECT.
:meth:`Ingest.run` takes everything queued, decodes and validates it, commits it in one transaction
and then publishes the committed events. While a batch is being written the next one accumulates,
so batches grow with load (group commit) with no timer.

Queue policy: at most ``ingest.queue_size`` device messages wait; past that a message is refused with
reason ``queue_full`` (counted per device and in ``iothub_messages_rejected``). Connection events are
never refused (one per connection, so bounded by the connection count).

If the store fails, the batch is retried with backoff (0.1 s, doubling up to 5 s) and ingest holds; the
queue then fills and overflows as above, so the hub keeps serving and says what it lost. With durable
ack the acknowledgements of the messages waiting for the store are held until their batch is
committed. At shutdown a batch the store still refuses after about 1.5 s of retries is given up
(logged as an error) so that the hub stops; its QoS 1/2 messages were never acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from iothub.devices import (
    CommandResponse,
    PayloadError,
    RejectReason,
    TopicError,
    TopicKind,
    TwinDocument,
    decode_status,
    decode_telemetry,
)
from iothub.devices import parse as parse_topic
from iothub.devices.payloads import decode_response, decode_twin
from iothub.hub.errors import StoreError
from iothub.hub.events import EventBus, EventType
from iothub.hub.fleet import DeviceState, Fleet
from iothub.hub.metrics import HubMetrics
from iothub.hub.presence import PresenceReason
from iothub.hub.settings import IngestSettings
from iothub.hub.store.base import Batch, PendingEvent, Point, Store

log = logging.getLogger(__name__)

_PUBLISH, _CONNECT, _DISCONNECT = 0, 1, 2
_DEVICE_PREFIX = "devices/"
_TO_DEVICES = frozenset({TopicKind.COMMAND, TopicKind.STATE_DESIRED})
_LOG_EVERY_MS = 60_000


class _Inbound(NamedTuple):
    op: int
    client_id: str | None
    topic: str  # for _DISCONNECT: the PresenceReason value
    payload: bytes
    received_ms: int


class Replies(Protocol):
    def on_response(self, device_id: str, response: CommandResponse) -> dict[str, Any] | RejectReason: ...


class Reports(Protocol):
    async def on_reported(self, device_id: str, report: TwinDocument) -> RejectReason | None: ...


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ingest:
    def __init__(
        self,
        settings: IngestSettings,
        store: Store,
        fleet: Fleet,
        bus: EventBus,
        metrics: HubMetrics,
        *,
        replies: Replies,
        reports: Reports,
        on_committed: Callable[[int], None] | None = None,
        shared: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.fleet = fleet
        self.bus = bus
        self.metrics = metrics
        self.replies = replies  # commands waiting for answers
        self.reports = reports  # device twins
        self.on_committed = on_committed  # durable ack: called with the last handled ticket
        self.shared = shared
        self._reports: list[tuple[DeviceState, TwinDocument, str, int]] = []
        self._queue: deque[_Inbound] = deque()
        self._tickets = 0  # device messages queued so far
        self._handled = 0  # of which committed (or refused) so far
        self._pending_messages = 0
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._max_future_ms = int(settings.max_future_skew_s * 1000)
        self._received = {k: metrics.messages_received.labels(k.value) for k in TopicKind if k not in _TO_DEVICES}
        self._rejected = {r: metrics.messages_rejected.labels(r.value) for r in RejectReason}
        self._global_logged: dict[RejectReason, int] = {}
        metrics.gauge_callback(
            "iothub_queue_depth",
            "Items waiting in a hub queue",
            ("queue",),
            lambda: [(("ingest",), len(self._queue))],
        )
        metrics.gauge_callback(
            "iothub_devices", "Devices known to the hub, by presence", ("online",), self._device_gauge
        )

    def _device_gauge(self) -> list[tuple[tuple[str, ...], float]]:
        online = self.fleet.online_count()
        return [(("true",), online), (("false",), len(self.fleet) - online)]

    # -- the broker tap (synchronous, never blocks) ------------------------------------------------

    def on_publish(self, client_id: str | None, topic: str, payload: bytes) -> int | None:
        """Queue a device message; its ticket, which :attr:`on_committed` reports once it is handled."""
        if not topic.startswith(_DEVICE_PREFIX):
            return None
        received = now_ms()
        if self._pending_messages >= self.settings.queue_size:
            self._refuse_queue_full(topic, received)
            return None
        self._pending_messages += 1
        self._queue.append(_Inbound(_PUBLISH, client_id, topic, payload, received))
        self._wakeup.set()
        self._tickets += 1
        return self._tickets

    def on_connect(self, client_id: str) -> None:
        self._queue.append(_Inbound(_CONNECT, client_id, "", b"", now_ms()))
        self._wakeup.set()

    def on_disconnect(self, client_id: str, reason: PresenceReason) -> None:
        self._queue.append(_Inbound(_DISCONNECT, client_id, reason.value, b"", now_ms()))
        self._wakeup.set()

    def _refuse_queue_full(self, topic: str, received: int) -> None:
        try:
            parsed = parse_topic(topic)
        except TopicError:
            parsed = None
        state = self.fleet.get(parsed.device_id) if parsed is not None else None
        self._reject(state, RejectReason.QUEUE_FULL, f"ingest queue full ({self.settings.queue_size})", topic, received)

    # -- the batch loop ----------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._queue)

    def stop(self) -> None:
        """Finish what is queued, then let :meth:`run` return."""
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        if not self.shared:
            await self._mark_restarted()
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            items = self._take(self.settings.batch_size)
            batch = Batch()
            touched: dict[str, DeviceState] = {}
            for item in items:
                self._apply(item, batch, touched)
            for device_id, state in touched.items():
                batch.devices[device_id] = state.persisted()
            if batch:
                await self._commit(batch)
            taken = sum(1 for item in items if item.op == _PUBLISH)
            if taken:
                self._handled += taken
                if self.on_committed is not None:
                    self.on_committed(self._handled)
            await self._apply_reports()

    async def _apply_reports(self) -> None:
        reports, self._reports = self._reports, []
        for state, report, topic, received in reports:
            refused = await self.reports.on_reported(state.id, report)
            if refused is not None:
                self._reject(state, refused, f"reported version {report.version} is not newer", topic, received)

    def _take(self, limit: int) -> list[_Inbound]:
        n = min(limit, len(self._queue))
        items = [self._queue.popleft() for _ in range(n)]
        self._pending_messages -= sum(1 for i in items if i.op == _PUBLISH)
        return items

    async def _commit(self, batch: Batch) -> None:
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                events = await self.store.write(batch)
            except StoreError as exc:
                if self._stopping and delay > 1:
                    log.error("giving up on a batch of %d points at shutdown: %s", len(batch.points), exc)
                    return
                log.error("store write failed, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            break
        self.metrics.store_batch_seconds.observe(time.perf_counter() - started)
        telemetry = sum(1 for e in events if e.type is EventType.TELEMETRY)
        self.metrics.store_batch_size.observe(telemetry)
        self.metrics.messages_stored.inc(telemetry)
        self.metrics.points_stored.inc(len(batch.points))
        self.bus.publish(events)

    async def _mark_restarted(self) -> None:
        """Devices online when the hub stopped are offline now: their connections went with it."""
        batch = Batch()
        ts = now_ms()
        for state in self.fleet.devices.values():
            if state.online and state.set_presence(False, PresenceReason.HUB_STOPPED, ts):
                batch.events.append(self._status_event(state))
                batch.devices[state.id] = state.persisted()
        if batch:
            await self._commit(batch)

    # -- one message -------------------------------------------------------------------------------

    def _apply(self, item: _Inbound, batch: Batch, touched: dict[str, DeviceState]) -> None:
        if item.op == _PUBLISH:
            self._apply_publish(item, batch, touched)
            return
        if item.op == _CONNECT:  # presence starts at CONNECT
            state = self.fleet.touch(item.client_id or "", item.received_ms)
            changed = state.set_presence(True, PresenceReason.CONNECTED, item.received_ms)
        else:
            known = self.fleet.get(item.client_id or "")
            if known is None:
                return
            state = known
            changed = state.set_presence(False, PresenceReason(item.topic), item.received_ms)
        touched[state.id] = state
        if changed:
            batch.events.append(self._status_event(state))

    def _apply_publish(self, item: _Inbound, batch: Batch, touched: dict[str, DeviceState]) -> None:
        received = item.received_ms
        try:
            parsed = parse_topic(item.topic)
        except TopicError as exc:
            known = None
            if exc.reason is RejectReason.UNKNOWN_TOPIC:
                known = self.fleet.touch(item.topic.split("/")[1], received)
                touched[known.id] = known
            self._reject(known, exc.reason, str(exc), item.topic, received)
            return
        if parsed is None or parsed.kind in _TO_DEVICES:
            return  # what the hub (or a service) sends a device is not the device's own message
        self._received[parsed.kind].inc()
        state = self.fleet.touch(parsed.device_id, received)
        touched[state.id] = state
        limits = {"max_bytes": self.settings.max_payload_bytes}
        try:
            if parsed.kind is TopicKind.TELEMETRY:
                t = decode_telemetry(item.payload, now_ms=received, max_future_ms=self._max_future_ms, **limits)
                if t.seq is not None:
                    is_new, gaps = state.seq.accept(t.seq)
                    if not is_new:
                        state.duplicates += 1
                        self.metrics.duplicates.inc()
                        return
                    state.seq_gaps += gaps
                    if gaps > 0:
                        self.metrics.seq_gaps.inc(gaps)
                ts = t.ts if t.ts is not None else received
                for metric, value in t.metrics.items():
                    batch.points.append(Point(state.id, metric, ts, value))
                    current = state.latest.get(metric)
                    if current is None or current[0] <= ts:
                        state.latest[metric] = (ts, value)
                state.messages += 1
                data = {"seq": t.seq, "metrics": t.metrics}
                batch.events.append(PendingEvent(EventType.TELEMETRY.value, ts, state.id, data))
            elif parsed.kind is TopicKind.STATUS:
                s = decode_status(item.payload, now_ms=received, max_future_ms=self._max_future_ms, **limits)
                reason = PresenceReason.REPORTED_ONLINE if s.online else PresenceReason.REPORTED_OFFLINE
                if state.set_presence(s.online, reason, s.ts or received, s.reason):
                    batch.events.append(self._status_event(state))
            elif parsed.kind is TopicKind.RESPONSE:
                r = decode_response(item.payload, **limits)
                matched = self.replies.on_response(state.id, r)
                if matched is RejectReason.UNKNOWN_REQUEST and self.shared:
                    return  # another hub process's command
                if isinstance(matched, RejectReason):
                    detail = "no command is waiting for" if matched is RejectReason.UNKNOWN_REQUEST else (
                        "another device was asked for")  # fmt: skip
                    self._reject(state, matched, f"response id {r.id!r}: {detail} it", item.topic, received)
                else:
                    batch.events.append(PendingEvent(EventType.COMMAND_RESULT.value, received, state.id, matched))
            elif parsed.kind is TopicKind.STATE_REPORTED:
                self._reports.append((state, decode_twin(item.payload, **limits), item.topic, received))
        except PayloadError as exc:
            self._reject(state, exc.reason, str(exc), item.topic, received)

    @staticmethod
    def _status_event(state: DeviceState) -> PendingEvent:
        assert state.since is not None
        return PendingEvent(EventType.STATUS.value, state.since, state.id, state.presence_view())

    def _reject(self, state: DeviceState | None, reason: RejectReason, detail: str, topic: str, received: int) -> None:
        self._rejected[reason].inc()
        if state is None:
            last = self._global_logged.get(reason, 0)
            if received - last >= _LOG_EVERY_MS:
                self._global_logged[reason] = received
                log.warning("refused a message on %r (%s): %s", topic, reason.value, detail)
            return
        state.rejected[reason.value] += 1
        state.last_rejection = {"reason": reason.value, "detail": detail, "topic": topic, "ts": received}
        if received - state.last_logged_ms >= _LOG_EVERY_MS:
            state.last_logged_ms = received
            log.warning(
                "device %s: refused a message on %r (%s): %s [%d refused so far; logged once a minute]",
                state.id,
                topic,
                reason.value,
                detail,
                sum(state.rejected.values()),
            )
