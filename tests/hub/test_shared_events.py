"""The shared event log's tail (external-broker mode): what the fleet observer fails on or waits for
never keeps events from the subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from iothub.hub.events import HubEvent
from iothub.hub.metrics import HubMetrics
from iothub.hub.shared_events import SharedEventBus
from iothub.hub.store import SqliteStore
from iothub.hub.store.base import Batch, PendingEvent
from tests.conftest import WAIT_S


def status(device_id: str, online: bool) -> PendingEvent:
    return PendingEvent("status", 1_700_000_000_000, device_id, {"online": online, "reason": "connected"})


async def test_an_observer_failing_or_waiting_loses_no_event(tmp_path: Path) -> None:
    blocked = asyncio.Event()  # never set: a broker that does not answer the follow-up's publish
    started: list[int] = []

    async def publish_commands(event: HubEvent) -> None:
        started.append(event.id)
        await blocked.wait()

    def observe(event: HubEvent) -> Coroutine[Any, Any, None] | None:
        if event.device_id == "bad":
            raise ValueError("'future-reason' is not a valid PresenceReason")
        return publish_commands(event) if event.data["online"] else None

    async with SqliteStore(tmp_path / "iothub.db", shared=True) as store:
        bus = SharedEventBus(HubMetrics(), 100, store, 0.05, observe)
        await bus.start()
        sub = bus.subscribe("test")
        async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tasks:
            tasks.create_task(bus.run())
            batch = [status("a", True), status("bad", True), status("b", False), status("c", True)]
            written = await store.write(Batch(events=batch))  # read by the tail (as another process's)
            seen: list[int] = []
            while len(seen) < len(written):
                seen += [item.id for item in await sub.next_batch() if isinstance(item, HubEvent)]
            bus.stop()
        assert seen == [e.id for e in written]
        assert bus.last_id == written[-1].id
        assert started == [written[0].id, written[3].id]  # both follow-ups began; the tail did not wait
        assert bus.finished.is_set()


def telemetry_event(device_id: str, n: int) -> PendingEvent:
    return PendingEvent("telemetry", 1_700_000_000_000 + n, device_id, {"metrics": {"n": n}, "seq": n})


async def test_local_events_next_in_the_log_go_straight_to_subscribers_others_through_the_tail(
    tmp_path: Path,
) -> None:
    path = tmp_path / "iothub.db"
    async with SqliteStore(path, shared=True) as store, SqliteStore(path, shared=True) as other_process:
        bus = SharedEventBus(HubMetrics(), 100, store, 60.0, lambda _: None)  # polls only when woken
        await bus.start()
        sub = bus.subscribe("test")
        # No tail yet: what this process commits next in the log is delivered without it.
        first = await store.write(Batch(events=[telemetry_event("a", 0), telemetry_event("a", 1)]))
        bus.publish(first)
        assert [item.id for item in sub.drain() if isinstance(item, HubEvent)] == [e.id for e in first]
        assert bus.last_id == first[-1].id
        async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tasks:
            tasks.create_task(bus.run())
            foreign = await other_process.write(Batch(events=[telemetry_event("b", 2)]))  # nobody wakes the tail
            local = await store.write(Batch(events=[telemetry_event("a", 3)]))
            bus.publish(local)  # not next (the other process's event is): the tail reads both
            seen: list[int] = []
            while len(seen) < 2:
                seen += [item.id for item in await sub.next_batch() if isinstance(item, HubEvent)]
            bus.stop()
        assert seen == [foreign[0].id, local[0].id]
        assert sub.drain() == []  # nothing delivered twice
