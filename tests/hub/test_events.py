import asyncio
import json

import pytest

from iothub.hub.events import EventBus, EventType, Gap, HubEvent
from iothub.hub.metrics import HubMetrics


def event(i: int) -> HubEvent:
    return HubEvent(i, EventType.TELEMETRY, 1000 + i, "d", {"metrics": {"x": i}})


def test_event_is_serialised_once() -> None:
    e = event(1)
    assert e.json is e.json
    assert json.loads(e.json) == {
        "id": 1,
        "type": "telemetry",
        "ts": 1001,
        "device_id": "d",
        "metrics": {"x": 1},
    }


async def test_every_subscriber_gets_every_event() -> None:
    bus = EventBus(HubMetrics(), 10)
    a, b = bus.subscribe("a"), bus.subscribe("b")
    bus.publish([event(1), event(2)])
    assert await a.next_batch() == [event(1), event(2)]
    assert await b.next_batch() == [event(1), event(2)]


async def test_a_slow_consumer_loses_the_oldest_and_is_told() -> None:
    metrics = HubMetrics()
    bus = EventBus(metrics, 3)
    slow, fast = bus.subscribe("slow"), bus.subscribe("fast", maxsize=10)
    bus.publish([event(1)])
    assert fast.drain() == [event(1)]
    assert slow.drain() == [event(1)]
    bus.publish([event(i) for i in range(2, 8)])
    assert fast.drain(limit=2) == [event(2), event(3)]  # a large enough queue loses nothing
    batch = slow.drain()
    assert batch[0] == Gap(missed=3, after_id=1)
    assert batch[1:] == [event(5), event(6), event(7)]
    assert slow.dropped == 3
    rendered = metrics.render().decode()
    assert 'iothub_fanout_dropped_total{consumer="slow"} 3.0' in rendered
    assert 'iothub_fanout_queue_depth{consumer="fast"} 4.0' in rendered
    assert 'iothub_fanout_dropped_total{consumer="fast"}' not in rendered


async def test_closing_ends_iteration_after_what_is_buffered() -> None:
    bus = EventBus(HubMetrics(), 10)
    sub = bus.subscribe("x")
    bus.publish([event(1)])
    bus.close()
    assert [item async for item in sub] == [event(1)]
    bus.publish([event(2)])  # nobody left: nothing buffered, nothing raised
    assert sub.depth == 0


async def test_a_waiting_consumer_wakes_on_publish() -> None:
    bus = EventBus(HubMetrics(), 10)
    sub = bus.subscribe("x")
    waiter = asyncio.create_task(sub.next_batch())
    await asyncio.sleep(0)
    assert not waiter.done()
    bus.publish([event(9)])
    async with asyncio.timeout(10):
        assert await waiter == [event(9)]


@pytest.mark.parametrize("limit", [1, 2])
async def test_drain_limit(limit: int) -> None:
    bus = EventBus(HubMetrics(), 10)
    sub = bus.subscribe("x")
    bus.publish([event(1), event(2), event(3)])
    assert len(sub.drain(limit)) == limit
