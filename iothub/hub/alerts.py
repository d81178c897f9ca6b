"""The alert evaluator: judges committed telemetry and presence changes against the rules, off
ingest's path, and commits each transition (event, history row and webhook outbox rows together).

It reads the hub's event bus like any bridge, while there is at least one rule (without rules it
is not subscribed and ingest's events cost it nothing): a subscription of ``alerts.queue_size``
events with the bus's policy (when evaluation falls behind, the oldest events drop, counted in
``iothub_fanout_dropped{consumer="alerts"}``), so ingest never waits for it. Timers (``for_s``,
``offline_for_s``) are kept in a heap, checked whenever events arrive and when the earliest is due.

A transition is an ``alert`` event on the bus (SSE and every live bridge fan it out), a row of the
alert history, webhook outbox rows, and an MQTT publish on ``hub/alerts/{rule}/{device}`` (QoS 1).
Firing alerts are restored from the history at start, so a restart never fires them twice. When a
rule is removed or changed, its firing alerts resolve with ``reason`` "rule removed" or "rule
changed" (also at start, for firing alerts of a rule removed while the hub was stopped). A stored
rule that does not validate (from an older version, or edited by hand) is logged once, naming how
to remove it, and skipped.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from iothub.hub.errors import StoreError
from iothub.hub.events import EventBus, EventType, Gap, HubEvent, Subscription
from iothub.hub.fleet import Fleet, iso
from iothub.hub.ingest import now_ms
from iothub.hub.labels import LabelDirectory
from iothub.hub.metrics import HubMetrics
from iothub.hub.rulebook import AnyRule, BadRule, Rulebook
from iothub.hub.rules import AlertState, MetricRule, OfflineRule, Transition, due_at, on_presence, on_tick, on_value
from iothub.hub.store.base import Batch, PendingEvent, Store

log = logging.getLogger(__name__)
RELOAD_S = 1.0  # rules added by another process (the CLI) apply within this
Key = tuple[str, str]  # (rule, device)
Emitted = tuple[str, dict[str, Any]]  # a transition to commit: (device, the alert event's data)


class AlertEvaluator:
    def __init__(
        self, rulebook: Rulebook, store: Store, bus: EventBus, fleet: Fleet, directory: LabelDirectory,
        publish: Callable[[str, bytes], Awaitable[None]], metrics: HubMetrics, queue_size: int,
    ) -> None:  # fmt: skip
        self.rulebook = rulebook
        self.store = store
        self.bus = bus
        self.fleet = fleet
        self.directory = directory  # the registered devices and their labels
        self.publish = publish
        self.metrics = metrics
        self.queue_size = queue_size
        self.rules: dict[str, AnyRule] = {}
        self._by_metric: dict[str, list[MetricRule]] = {}
        self._offline: list[OfflineRule] = []
        self.states: dict[Key, AlertState] = {}
        self._timers: dict[Key, int] = {}  # when each pending condition may fire (epoch ms)
        self._due: list[tuple[int, Key]] = []  # a heap of the timers; entries no longer in _timers are skipped
        self._sub: Subscription | None = None  # only while there are rules: without, events cost nothing
        self._stopping = False
        self._wake = asyncio.Event()  # stopping, or the rules changed
        self._out: list[Emitted] = []
        self._ended: list[Emitted] = []  # resolved because their rule was removed or changed
        self._bad: set[tuple[str, str]] = set()  # stored rules that do not validate, logged once
        self._watch_from: dict[str, int] = {}  # when each rule was loaded (epoch ms): offline time counts from then
        self._sweep_due = True  # the offline rules or the registered devices changed
        self._swept_version = -1  # the label directory's version at the last sweep
        self._known: set[str] = set()  # the devices known (registered or seen) at the last sweep
        self._known_loaded = False  # whether the registered devices were among them

    def stop(self) -> None:
        """Evaluate what is buffered, then let :meth:`run` return."""
        self._stopping = True
        self._wake.set()
        if self._sub is not None:
            self._sub.close()

    async def reload(self) -> None:
        """Read the rules again (in a thread) and apply the difference; the alerts of a removed or
        changed rule that were firing resolve (``reason`` says why; :meth:`run` commits them), and
        the rule starts afresh."""
        found, bad = await asyncio.to_thread(self.rulebook.catalogue)
        self._report(bad)
        rules = {rule.name: rule for rule, _ in found}
        if rules != self.rules:
            self._apply(rules)
        self._sweep()

    def _apply(self, rules: dict[str, AnyRule]) -> None:
        for key in [k for k in self.states if self.rules.get(k[0]) != rules.get(k[0])]:
            state = self.states.pop(key)
            self._timers.pop(key, None)
            if state.firing:
                reason = "rule changed" if key[0] in rules else "rule removed"
                data = self._data(self.rules[key[0]], key[1], Transition.RESOLVED, state)
                self._ended.append((key[1], data | {"reason": reason}))
        now = now_ms()
        self._watch_from = {name: self._watch_from.get(name, now) if self.rules.get(name) == r else now
                            for name, r in rules.items()}  # fmt: skip
        self._sweep_due = True
        self.rules = rules
        self._by_metric = {}
        for rule in rules.values():
            if isinstance(rule, MetricRule):
                self._by_metric.setdefault(rule.metric, []).append(rule)
        self._offline = [r for r in rules.values() if isinstance(r, OfflineRule)]
        self._follow()
        self._wake.set()

    def _sweep(self) -> None:
        """Offline rules watch every registered device, one never seen or offline since before the
        rule was loaded too: its offline time counts from when the rule was loaded (the hub started,
        or the rule was added), or from when the device went offline if that is later. Runs when the
        rules or the registered devices changed; devices no longer known stop being watched."""
        version = self.directory.version
        if not self._sweep_due and version == self._swept_version:
            return
        self._sweep_due, self._swept_version = False, version
        if not self._offline:
            return
        known = set(self.directory.device_ids()) | self.fleet.devices.keys()
        before, self._known = self._known, known
        arrived = now_ms() if self._known_loaded else 0  # devices registered since the last sweep count from now
        self._known_loaded = self.directory.loaded
        offline = {rule.name for rule in self._offline}
        for key in [k for k, st in self.states.items() if k[0] in offline and k[1] not in known and not st.firing]:
            del self.states[key]
            self._timers.pop(key, None)
        for rule in self._offline:
            watched_from = self._watch_from[rule.name]
            for device_id in known:
                if (rule.name, device_id) in self.states or not self._selects(rule, device_id):
                    continue
                device = self.fleet.get(device_id)
                if device is not None and device.online:
                    continue
                went = (device.since or 0) if device is not None else 0
                since = max(watched_from, 0 if device_id in before else arrived, went)
                self._step(rule, device_id, on_presence(self._state(rule, device_id), False, since))

    def _report(self, bad: list[BadRule]) -> None:
        """Log each stored rule that does not validate once (again if it changes): it is skipped."""
        seen = {(b.name, b.error) for b in bad}
        for rule in bad:
            if (rule.name, rule.error) not in self._bad:
                log.error("alert rule %r is invalid and skipped: %s; remove it: %s", rule.name, rule.error, rule.remedy)
        self._bad = seen

    def _follow(self) -> None:
        """Read the event bus while there is a rule, and only then."""
        if self.rules and self._sub is None and not self._stopping:
            self._sub = self.bus.subscribe("alerts", self.queue_size)
        elif not self.rules and self._sub is not None and not self._stopping:
            self._sub.close()
            self._sub = None

    async def run(self) -> None:
        await self.reload()
        for rule, device_id, data in await asyncio.to_thread(self.rulebook.firing):
            if rule in self.rules:
                state = self._state(self.rules[rule], device_id)
                state.firing, state.value = True, data.get("value")
                self._timers.pop((rule, device_id), None)
            else:  # its rule was removed while the hub was stopped
                self._ended.append((device_id, data | {"state": Transition.RESOLVED.value, "reason": "rule removed"}))
        last_reload = asyncio.get_running_loop().time()
        while True:
            now = now_ms()
            wait_s = RELOAD_S
            due = self._next_due()
            if due is not None:
                wait_s = min(wait_s, max(0.0, (due - now) / 1000))
            sub = self._sub
            self._wake.clear()
            batch: list[HubEvent | Gap] = []
            try:
                async with asyncio.timeout(wait_s):
                    if sub is None:
                        await self._wake.wait()
                    else:
                        batch = await sub.next_batch()
            except TimeoutError:
                pass
            if not batch and (self._stopping or (sub is not None and sub.closed and sub is self._sub)):
                return  # stopped (what was buffered is evaluated), or the bus closed
            if asyncio.get_running_loop().time() - last_reload >= RELOAD_S:
                last_reload = asyncio.get_running_loop().time()
                await self.reload()
            transitions, self._ended = self._ended, []
            transitions += self._judge([e for e in batch if isinstance(e, HubEvent)], now_ms())
            if transitions:
                await self._emit(transitions)

    def _judge(self, events: list[HubEvent], now: int) -> list[Emitted]:
        self._out = []
        for event in events:
            if event.type is EventType.TELEMETRY:
                for metric, value in event.data["metrics"].items():
                    for rule in self._by_metric.get(metric, ()):
                        if self._selects(rule, event.device_id):
                            state = self._state(rule, event.device_id)
                            self._step(rule, event.device_id, on_value(rule, state, value, now))
            elif event.type is EventType.STATUS:
                online = bool(event.data["online"])
                for offline_rule in self._offline:
                    if self._selects(offline_rule, event.device_id):
                        state = self._state(offline_rule, event.device_id)
                        self._step(offline_rule, event.device_id, on_presence(state, online, event.ts))
        while self._due and self._due[0][0] <= now:
            due, key = heapq.heappop(self._due)
            if self._timers.get(key) == due:
                del self._timers[key]
                timed = self.rules[key[0]]
                self._step(timed, key[1], on_tick(timed, self.states[key], now))
        return self._out

    def _next_due(self) -> int | None:
        """The earliest timer (epoch ms), or None."""
        while self._due and self._timers.get(self._due[0][1]) != self._due[0][0]:
            heapq.heappop(self._due)  # a timer since cancelled or moved
        return self._due[0][0] if self._due else None

    def _selects(self, rule: AnyRule, device_id: str) -> bool:
        return rule.select.matches(device_id, self.directory.get(device_id))

    def _state(self, rule: AnyRule, device_id: str) -> AlertState:
        return self.states.setdefault((rule.name, device_id), AlertState())

    def _step(self, rule: AnyRule, device_id: str, transition: Transition | None) -> None:
        key = (rule.name, device_id)
        state = self.states[key]
        due = due_at(rule, state)
        if due is None:
            self._timers.pop(key, None)
        elif self._timers.get(key) != due:
            self._timers[key] = due
            heapq.heappush(self._due, (due, key))
            if len(self._due) > 2 * len(self._timers) + 64:  # mostly stale: rebuild
                self._due = [(d, k) for k, d in self._timers.items()]
                heapq.heapify(self._due)
        if transition is not None:
            self._out.append((device_id, self._data(rule, device_id, transition, state)))

    def _data(self, rule: AnyRule, device_id: str, transition: Transition, state: AlertState) -> dict[str, Any]:
        """The data of the alert event of a transition."""
        data: dict[str, Any] = {"rule": rule.name, "state": transition.value, "kind": rule.kind}
        if isinstance(rule, MetricRule):
            return data | {"metric": rule.metric, "value": state.value}
        device = self.fleet.get(device_id)
        return data | {"value": None, "offline_since": iso(device.since) if device else None}

    async def _emit(self, transitions: list[Emitted]) -> None:
        now = now_ms()
        batch = Batch()
        for device_id, data in transitions:
            batch.events.append(PendingEvent(EventType.ALERT.value, now, device_id, data))
            self.metrics.alert_transitions.labels(data["state"]).inc()
        events = await self._write(batch)
        self.bus.publish(events)
        for event in events:
            payload = {"rule": event.data["rule"], "device_id": event.device_id, "state": event.data["state"],
                       "value": event.data["value"], "ts": event.ts}  # fmt: skip
            try:
                await self.publish(f"hub/alerts/{event.data['rule']}/{event.device_id}", json.dumps(payload).encode())
            except Exception as exc:  # the broker may be closing; the transition is stored and fanned out
                log.warning("could not publish alert %s for %s: %s", event.data["rule"], event.device_id, exc)

    async def _write(self, batch: Batch) -> list[HubEvent]:
        delay = 0.1
        while True:
            try:
                return await self.store.write(batch)
            except StoreError as exc:
                if self._stopping and delay > 1:
                    log.error("giving up on %d alert transitions at shutdown: %s", len(batch.events), exc)
                    return []
                log.error("store write of alert transitions failed, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
