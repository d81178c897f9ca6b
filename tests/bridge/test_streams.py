"""The stream core without HTTP: a real EventBus, a real SQLite store and registry in a tmp dir."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from iothub.bridge.errors import BadRequest
from iothub.bridge.streams import (
    BadSubscription,
    Channel,
    Consumer,
    Delivery,
    Limits,
    StreamFilter,
    StreamGap,
    StreamMetrics,
)
from iothub.hub.events import EventBus, HubEvent
from iothub.hub.labels import LabelDirectory
from iothub.hub.metrics import HubMetrics
from iothub.hub.registry import Registry
from iothub.hub.store import Batch, SqliteStore
from iothub.hub.store.base import PendingEvent

WAIT_S = 5.0


@dataclass
class Rig:
    """What a channel runs on, as the hub has it: bus, store, registry and its labels directory."""

    bus: EventBus
    store: SqliteStore
    registry: Registry
    labels: LabelDirectory
    metrics: HubMetrics
    encoded: list[int] = field(default_factory=list)  # event id per encoder call
    tasks: asyncio.TaskGroup = field(default_factory=asyncio.TaskGroup)

    def encode(self, event: HubEvent, body: bytes) -> bytes:
        self.encoded.append(event.id)
        return body

    def channel(self, **limits: int) -> Channel[bytes]:
        channel = Channel("test", self.bus, self.store, self.labels, self.encode, Limits(**limits))
        self.tasks.create_task(channel.run())
        return channel

    async def commit(self, device_id: str, n: int = 1, type: str = "telemetry", **data: Any) -> list[HubEvent]:
        """Store ``n`` events, one transaction each (as ingest does), without publishing them."""
        out = []
        for _ in range(n):
            body = data or {"metrics": {"x": 1}}
            out += await self.store.write(Batch(events=[PendingEvent(type, 1, device_id, body)]))
        return out

    async def emit(self, device_id: str, n: int = 1, type: str = "telemetry", **data: Any) -> list[HubEvent]:
        """Store events, then hand them to the fan-out: what ingest does with every batch."""
        events = await self.commit(device_id, n, type, **data)
        self.bus.publish(events)
        return events


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """The store keeps 10 events, unless the test asks for more (``indirect`` parametrisation)."""
    metrics = HubMetrics()
    registry = Registry(tmp_path / "registry.db")
    store = SqliteStore(tmp_path / "events.db", retention=getattr(request, "param", 10))
    async with store:
        rig = Rig(EventBus(metrics, 10_000), store, registry, LabelDirectory(registry), metrics)
        async with rig.tasks:
            yield rig
            rig.bus.close()  # every channel's run() ends
    registry.close()


async def routed(probe: Consumer[bytes], event: HubEvent) -> None:
    """Wait until the channel has routed ``event`` (it routes in order, so everything before it too)."""
    async with asyncio.timeout(WAIT_S):
        while not any(i == event.id for i, _ in probe.items):
            probe.wakeup.clear()
            await probe.wakeup.wait()


def ids(delivery: Delivery[bytes]) -> list[int]:
    return [json.loads(frame)["id"] for frame in delivery.frames]


async def next_delivery(deliveries: AsyncIterator[Delivery[bytes]]) -> Delivery[bytes]:
    async with asyncio.timeout(WAIT_S):
        return await anext(deliveries)


# -- filters -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"devices": ["ok", "a b"]}, "devices", "field 'devices': 'a b' is not a device id (or *)"),
        ({"labels": ["berlin"]}, "labels", "field 'labels': 'berlin' is not key=value"),
        ({"labels": ["=x"]}, "labels", "field 'labels': '=x' is not key=value"),
        ({"metrics": ["t", "a b"]}, "metrics", "field 'metrics': metric names follow [A-Za-z0-9_.-]{1,64}"),
        ({"types": ["status", "weather"]}, "types", "field 'types': 'weather' is not one of telemetry, status"),
    ],
)
def test_filter_errors_name_the_field(values: dict[str, list[str]], field: str, message: str) -> None:
    with pytest.raises(BadSubscription) as caught:
        StreamFilter.parse(
            values.get("devices", ()), values.get("labels", ()), values.get("metrics", ()), values.get("types", ()),
            where="field",
        )  # fmt: skip
    assert caught.value.field == field
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, BadRequest)  # answered with 400 by the HTTP app


def test_filter_errors_use_the_callers_names() -> None:
    with pytest.raises(BadSubscription, match=r"^parameter 'label': 'x' is not key=value$"):
        StreamFilter.parse(labels=["x"], names={"labels": "label"})


def test_filter_from_plain_values() -> None:
    f = StreamFilter.parse(["a", "b"], ["site=berlin", "floor=2"], ["t"], ["telemetry"])
    assert f.devices == frozenset({"a", "b"})
    assert f.labels == (("floor", "2"), ("site", "berlin"))
    assert f.metrics == frozenset({"t"})
    assert {t.value for t in f.types} == {"telemetry"}
    everything = StreamFilter.parse(["*", "a"])
    assert everything == StreamFilter()


# -- routing -----------------------------------------------------------------------------------------


async def test_routing_by_device_label_everyone_types_and_metrics(rig: Rig) -> None:
    rig.registry.add_device("b", labels={"site": "berlin"})
    channel = rig.channel()
    with (
        channel.attach(StreamFilter()) as everyone,
        channel.attach(StreamFilter.parse(devices=["a"])) as only_a,
        channel.attach(StreamFilter.parse(labels=["site=berlin"])) as berlin,
        channel.attach(StreamFilter.parse(types=["status"])) as statuses,
        channel.attach(StreamFilter.parse(devices=["a"], metrics=["t"])) as a_t,
    ):
        ta = await rig.emit("a", metrics={"t": 1, "h": 2})
        tb = await rig.emit("b", metrics={"t": 3})
        sc = await rig.emit("c", type="status", online=True)
        ha = await rig.emit("a", metrics={"h": 5})  # none of a_t's metrics: nothing for it
        await routed(everyone, ha[0])
        assert ids(everyone.take()) == [ta[0].id, tb[0].id, sc[0].id, ha[0].id]
        assert ids(only_a.take()) == [ta[0].id, ha[0].id]
        assert ids(berlin.take()) == [tb[0].id]
        assert ids(statuses.take()) == [sc[0].id]
        trimmed = a_t.take()
        assert ids(trimmed) == [ta[0].id]
        assert json.loads(trimmed.frames[0])["metrics"] == {"t": 1}


async def test_devices_and_labels_together_without_a_labels_only_consumer(rig: Rig) -> None:
    rig.registry.add_device("a", labels={"site": "berlin"})
    rig.registry.add_device("b", labels={"site": "paris"})
    channel = rig.channel()
    with channel.attach(StreamFilter.parse(devices=["a", "b"], labels=["site=berlin"])) as both:
        first = await rig.emit("a")
        await rig.emit("b")  # one of its devices, not its label
        second = await rig.emit("a")
        await routed(both, second[0])
        assert ids(both.take()) == [first[0].id, second[0].id]


async def test_the_index_keeps_no_empty_slots(rig: Rig) -> None:
    channel = rig.channel()
    many = StreamFilter.parse(devices=[f"d{i}" for i in range(50)])
    with channel.attach(StreamFilter.parse(devices=["z"])) as probe:
        with channel.attach(many), channel.attach(StreamFilter.parse(labels=["site=berlin"])):
            assert len(channel._by_device) == 51
        assert (set(channel._by_device), channel._by_label) == ({"z"}, {})
        with channel.attach(StreamFilter.parse(devices=["a"])) as slow:
            channel.kick(slow)
            assert set(channel._by_device) == {"z"}  # a kicked consumer's slot goes at once
        await rig.emit("q")  # routing only looks: no slot for an event's device
        await routed(probe, (await rig.emit("z"))[0])
    assert (channel._by_device, channel._by_label) == ({}, {})


async def test_label_changes_in_this_process_route_at_once(rig: Rig) -> None:
    rig.registry.add_device("c")
    channel = rig.channel()
    with channel.attach(StreamFilter()) as probe, channel.attach(StreamFilter.parse(labels=["site=paris"])) as paris:
        before = await rig.emit("c")
        await routed(probe, before[0])
        rig.registry.update_device("c", labels={"site": "paris"})  # no reload: the listener told the directory
        after = await rig.emit("c")
        await routed(probe, after[0])
        assert ids(paris.take()) == [after[0].id]
        rig.registry.remove_device("c")
        gone = await rig.emit("c")
        await routed(probe, gone[0])
        assert paris.take().frames == []


async def test_label_changes_from_another_process_after_a_refresh(rig: Rig, tmp_path: Path) -> None:
    await rig.labels.load()
    other = Registry(tmp_path / "registry.db")  # as `iothub devices add` beside a running hub
    try:
        other.add_device("d", labels={"site": "oslo"})
        assert rig.labels.get("d") == {}
        await rig.labels.refresh()
        assert rig.labels.get("d") == {"site": "oslo"}
        other.remove_device("d")
        await rig.labels.refresh()
        assert "d" not in rig.labels
    finally:
        other.close()


async def test_each_frame_is_encoded_once_per_metrics_filter(rig: Rig) -> None:
    channel = rig.channel()
    filters = [StreamFilter()] * 3 + [StreamFilter.parse(metrics=["t"])] * 2 + [StreamFilter.parse(metrics=["h"])]
    with contextlib.ExitStack() as stack:
        consumers = [stack.enter_context(channel.attach(f)) for f in filters]
        event = (await rig.emit("a", metrics={"t": 1, "h": 2}))[0]
        await routed(consumers[0], event)
        assert rig.encoded == [event.id] * 3  # whole, trimmed to t, trimmed to h
        frames = [c.items[0][1] for c in consumers]
        assert frames[0] is frames[1] is frames[2]
        assert frames[3] is frames[4]
        assert json.loads(frames[5])["metrics"] == {"h": 2}


# -- backpressure ------------------------------------------------------------------------------------


async def test_a_slow_consumer_loses_the_oldest_and_gets_a_gap(rig: Rig) -> None:
    channel = rig.channel(queue_size=3, max_dropped=100)
    StreamMetrics.of(rig.metrics.registry).add(channel, own_names=True)
    with channel.attach(StreamFilter.parse(devices=["a"])) as slow, channel.attach(StreamFilter.parse(["z"])) as probe:
        first = await rig.emit("a")
        await routed(probe, (await rig.emit("z"))[0])
        assert slow.take() == Delivery(None, [first[0].json])
        rest = await rig.emit("a", 10)
        await routed(probe, (await rig.emit("z"))[0])
        delivery = slow.take()
    assert delivery.gap == StreamGap(missed=7, after_id=first[0].id, reason="slow_consumer")
    assert ids(delivery) == [e.id for e in rest[-3:]]
    assert slow.dropped == 7
    rendered = rig.metrics.render().decode()
    assert 'iothub_stream_dropped_total{channel="test"} 7.0' in rendered
    assert "iothub_test_dropped_total 7.0" in rendered


async def test_a_consumer_past_max_dropped_is_kicked(rig: Rig) -> None:
    channel = rig.channel(queue_size=2, max_dropped=3)
    with channel.attach(StreamFilter()) as slow:
        deliveries = aiter(slow)
        await rig.emit("a", 6)  # 4 drops: one more than it may lose
        async with asyncio.timeout(WAIT_S):
            rest = [d async for d in deliveries]  # iteration ends: kicked
    assert slow.kicked
    assert rest == []
    assert slow not in channel.consumers
    assert channel.stats.kicked == 1
    assert slow.dropped == 4


# -- resume ------------------------------------------------------------------------------------------


async def test_resume_replays_then_goes_live_without_duplicate_or_hole(rig: Rig) -> None:
    channel = rig.channel(replay_page=2)
    with channel.attach(StreamFilter()) as probe:
        stored = await rig.emit("a", 5)
        await routed(probe, stored[-1])
        with channel.attach(StreamFilter(), resume_after=0) as late:
            deliveries = aiter(late)
            got = ids(await next_delivery(deliveries))  # the first page: 1, 2
            sixth = await rig.commit("a")  # committed now; its fan-out comes after the replay has read it
            got += ids(await next_delivery(deliveries))  # 3, 4
            got += ids(await next_delivery(deliveries))  # 5, 6: the sixth from the store
            rig.bus.publish(sixth)  # ... and now live as well
            seventh = await rig.emit("a")
            await routed(probe, seventh[0])
            got += ids(await next_delivery(deliveries))
    assert got == [e.id for e in [*stored, *sixth, *seventh]]


async def test_resume_hands_over_to_the_live_queue(rig: Rig) -> None:
    channel = rig.channel(replay_page=2)
    with channel.attach(StreamFilter()) as probe:
        stored = await rig.emit("a", 5)
        await routed(probe, stored[-1])
        with channel.attach(StreamFilter(), resume_after=0) as late:
            deliveries = aiter(late)
            got = ids(await next_delivery(deliveries))
            live = await rig.emit("a", 2)  # routed to it during the replay: the replay stops before them
            await routed(probe, live[-1])
            while len(got) < 7:
                got += ids(await next_delivery(deliveries))
    assert got == [e.id for e in [*stored, *live]]


@pytest.mark.parametrize("rig", [1000], indirect=True)  # keeps the whole replay
async def test_drops_during_a_replay_are_replayed_not_lost(rig: Rig) -> None:
    channel = rig.channel(queue_size=3, max_dropped=2, replay_page=4)
    last = (await rig.commit("a", 20))[-1].id
    got: list[int] = []
    a = StreamFilter.parse(devices=["a"])
    with channel.attach(StreamFilter.parse(devices=["z"])) as probe, channel.attach(a, resume_after=0) as late:
        deliveries = aiter(late)
        for _ in range(50):  # the replay reads 4 events a page, the live load adds 2: it catches up
            if late.replaying:
                # Routed while the replay awaits its next read: the full queue's head moves past it.
                last = (await rig.emit("a", 2))[-1].id
            elif got[-1] == last:
                break
            delivery = await next_delivery(deliveries)
            assert delivery.gap is None
            got += ids(delivery)
        assert got == list(range(1, last + 1))  # each event once, in order: no hole, no duplicate
        assert (late.dropped, channel.stats.dropped, late.kicked) == (0, 0, False)
        after = await rig.emit("a", 5)  # live now: two of them are lost
        await routed(probe, (await rig.emit("z"))[0])
        delivery = await next_delivery(deliveries)
    assert delivery.gap == StreamGap(missed=2, after_id=last, reason="slow_consumer")
    assert ids(delivery) == [e.id for e in after[-3:]]
    assert (late.dropped, channel.stats.dropped, late.kicked) == (2, 2, False)


@pytest.mark.parametrize("rig", [1000], indirect=True)
async def test_a_replay_under_a_concurrent_live_load(rig: Rig) -> None:
    channel = rig.channel(queue_size=3, max_dropped=10, replay_page=4)
    await rig.commit("a", 20)
    total = 20 + 200  # ids are 1.., so the last one is known beforehand
    got: list[int] = []
    gaps: list[StreamGap] = []

    async def load() -> None:
        # 4 events a commit while the replay runs (routed during its reads: the queue of 3 drops), then 1.
        left = total - 20
        while left:
            n = min(4 if late.replaying else 1, left)
            pending = [PendingEvent("telemetry", 1, "a", {"metrics": {"x": 1}})] * n
            rig.bus.publish(await rig.store.write(Batch(events=pending)))
            left -= n

    with channel.attach(StreamFilter(), resume_after=0) as late:
        deliveries = aiter(late)
        async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tasks:
            tasks.create_task(load())
            while not got or got[-1] < total:  # the newest event always arrives (drops take the oldest)
                delivery = await anext(deliveries)
                gaps += [delivery.gap] if delivery.gap else []
                got += ids(delivery)
    assert got == sorted(set(got))  # in order, each once
    lost = set(range(1, total + 1)) - set(got)
    # Batches of 4 committed as the replay hands over may each lose one to the queue, as live
    # traffic: counted and announced. Nothing replayed is lost, nothing delivered is announced.
    assert all(i > (late.replayed_to or 0) for i in lost)
    assert sum(g.missed or 0 for g in gaps) == len(lost) == late.dropped == channel.stats.dropped
    assert all(g.reason == "slow_consumer" for g in gaps)
    assert not late.kicked


async def test_events_no_longer_stored_are_a_gap(rig: Rig) -> None:
    channel = rig.channel(replay_page=5)
    await rig.commit("a", 30)  # retention 10: the store keeps 21..30
    with channel.attach(StreamFilter(), resume_after=0) as late:
        deliveries = aiter(late)
        first = await next_delivery(deliveries)
        assert first.gap == StreamGap(missed=20, after_id=0, reason="no longer stored")
        assert ids(first) == list(range(21, 26))
        await rig.commit("a", 10)  # pruned while replaying: 26..30 go
        second = await next_delivery(deliveries)
    assert second.gap == StreamGap(missed=5, after_id=25, reason="no longer stored")
    assert ids(second) == list(range(31, 36))


async def test_a_gap_at_the_replay_limit(rig: Rig) -> None:
    channel = rig.channel(replay_page=2, replay_limit=5)
    with channel.attach(StreamFilter()) as probe:
        stored = await rig.emit("a", 9)
        await routed(probe, stored[-1])
        with channel.attach(StreamFilter(), resume_after=0) as late:
            deliveries = aiter(late)
            got = [await next_delivery(deliveries) for _ in range(4)]
            live = await rig.emit("a")
            after = await next_delivery(deliveries)
    assert [ids(d) for d in got[:3]] == [[1, 2], [3, 4], [5]]
    assert got[3] == Delivery(StreamGap(None, 5, "replay limit of 5 events reached"), [])
    assert ids(after) == [live[0].id]
