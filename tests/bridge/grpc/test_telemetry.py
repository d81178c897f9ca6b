"""TelemetryService over a real grpc.aio channel: Query, Latest, Subscribe (filters, resume, gaps, slow)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest

from iothub.hub.registry import Scope
from iothub.runner import Running, serve
from iothub.v1 import events_pb2, hub_pb2, hub_pb2_grpc, telemetry_pb2, telemetry_pb2_grpc
from tests.bridge.grpc.conftest import Metadata, bearer, events_of, read_items
from tests.conftest import WAIT_S, EventWaiter, device_secret, hub_settings, mqtt_client, telemetry, unique_id

AGG = telemetry_pb2


def stub(channel: grpc.aio.Channel) -> telemetry_pb2_grpc.TelemetryServiceAsyncStub:
    return telemetry_pb2_grpc.TelemetryServiceStub(channel)


async def stored_series(hub: Running, events: EventWaiter) -> tuple[str, int]:
    """A device with t = 1, 3 in one second and 5 in the next, from ``base`` (ms, a whole second)."""
    device_id = unique_id()
    base = (int(time.time() * 1000) - 60_000) // 1000 * 1000
    async with mqtt_client(hub, device_id) as client:
        for offset, value in ((0, 1), (100, 3), (1500, 5)):
            await client.publish(f"devices/{device_id}/telemetry", telemetry({"t": value}, ts=base + offset), qos=1)
        await events.until(lambda e: e.device_id == device_id and e.data.get("metrics") == {"t": 5})
    return device_id, base


def numbers(series: telemetry_pb2.Series) -> list[tuple[int, float]]:
    return [(p.ts_ms, p.value.number) for p in series.points]


@pytest.mark.parametrize(
    ("aggregation", "first_bucket"),
    [(AGG.AGGREGATION_AVG, 2), (AGG.AGGREGATION_MIN, 1), (AGG.AGGREGATION_MAX, 3), (AGG.AGGREGATION_LAST, 3),
     (AGG.AGGREGATION_COUNT, 2), (AGG.AGGREGATION_UNSPECIFIED, 2)],
)  # fmt: skip
async def test_query_downsampled(
    hub: Running,
    channel: grpc.aio.Channel,
    admin: Metadata,
    events: EventWaiter,
    aggregation: telemetry_pb2.Aggregation.ValueType,
    first_bucket: float,
) -> None:
    device_id, base = await stored_series(hub, events)
    request = telemetry_pb2.QueryRequest(device_id=device_id, metrics=["t"], step_ms=1000, aggregation=aggregation)
    answer = await stub(channel).Query(request, metadata=admin)
    (series,) = answer.series
    second_bucket = 1 if aggregation == AGG.AGGREGATION_COUNT else 5
    assert numbers(series) == [(base, first_bucket), (base + 1000, second_bucket)]
    assert answer.step_ms == 1000
    assert answer.aggregation == (aggregation or AGG.AGGREGATION_AVG)


async def test_query_raw_and_limited(
    hub: Running, channel: grpc.aio.Channel, admin: Metadata, events: EventWaiter
) -> None:
    device_id, base = await stored_series(hub, events)
    raw = await stub(channel).Query(telemetry_pb2.QueryRequest(device_id=device_id), metadata=admin)
    assert [(s.metric, numbers(s), s.truncated) for s in raw.series] == [
        ("t", [(base, 1), (base + 100, 3), (base + 1500, 5)], False)
    ]
    newest = await stub(channel).Query(
        telemetry_pb2.QueryRequest(device_id=device_id, from_ms=base, to_ms=base + 1000, limit=1), metadata=admin
    )
    assert [(numbers(s), s.truncated) for s in newest.series] == [([(base + 100, 3)], True)]
    assert (newest.from_ms, newest.to_ms) == (base, base + 1000)


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"from_ms": 2000, "to_ms": 1000}, grpc.StatusCode.INVALID_ARGUMENT, "field 'from_ms': 2000 is after to_ms"),
        ({"step_ms": 1000, "aggregation": 42}, grpc.StatusCode.INVALID_ARGUMENT, "field 'aggregation': 42 is not one"),
        ({"aggregation": AGG.AGGREGATION_MAX}, grpc.StatusCode.INVALID_ARGUMENT, "it needs step_ms"),
        ({"step_ms": -5}, grpc.StatusCode.INVALID_ARGUMENT, "field 'step_ms': -5 is not a positive"),
        ({"from_ms": 0, "to_ms": 10**9, "step_ms": 1}, grpc.StatusCode.INVALID_ARGUMENT, "more than 100000 buckets"),
        ({"limit": -1}, grpc.StatusCode.INVALID_ARGUMENT, "field 'limit': -1 is outside"),
        ({"metrics": ["nope"]}, grpc.StatusCode.NOT_FOUND, "has no metric 'nope'"),
        ({"device_id": "ghost"}, grpc.StatusCode.NOT_FOUND, "no device 'ghost'"),
    ],
)
async def test_bad_queries(
    hub: Running,
    channel: grpc.aio.Channel,
    admin: Metadata,
    events: EventWaiter,
    fields: dict[str, object],
    code: grpc.StatusCode,
    message: str,
) -> None:
    device_id, _ = await stored_series(hub, events)
    request = telemetry_pb2.QueryRequest(**{"device_id": device_id, **fields})  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub(channel).Query(request, metadata=admin)
    assert failed.value.code() == code
    assert message in (failed.value.details() or "")


async def test_latest(hub: Running, channel: grpc.aio.Channel, admin: Metadata, events: EventWaiter) -> None:
    device_id, base = await stored_series(hub, events)
    latest = await stub(channel).Latest(telemetry_pb2.LatestRequest(device_id=device_id), metadata=admin)
    assert dict(latest.latest) == {"t": events_pb2.Reading(value=events_pb2.Value(number=5), ts_ms=base + 1500)}
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub(channel).Latest(telemetry_pb2.LatestRequest(device_id=device_id, metrics=["h"]), metadata=admin)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND


async def read_to_the_end(call: object) -> None:
    """Read until the stream ends (a status other than OK raises AioRpcError); bounded in time."""
    assert isinstance(call, grpc.aio.UnaryStreamCall)
    async with asyncio.timeout(WAIT_S):
        while await call.read() is not grpc.aio.EOF:
            pass


async def test_subscribe_with_filters(hub: Running, channel: grpc.aio.Channel, admin: Metadata) -> None:
    a, b = unique_id("a"), unique_id("b")
    device_secret(hub, b)
    hub.hub.registry.update_device(b, labels={"site": "berlin"})
    only_a = stub(channel).Subscribe(
        telemetry_pb2.SubscribeRequest(
            filter=events_pb2.StreamFilter(devices=[a], types=["telemetry"], metrics=["t"])
        ), metadata=admin,
    )  # fmt: skip
    berlin = stub(channel).Subscribe(
        telemetry_pb2.SubscribeRequest(filter=events_pb2.StreamFilter(labels=["site=berlin"])), metadata=admin
    )
    async with asyncio.timeout(WAIT_S):  # the initial metadata comes once a stream is attached
        await only_a.wait_for_connection()
        await berlin.wait_for_connection()
    async with mqtt_client(hub, a) as dev_a, mqtt_client(hub, b) as dev_b:
        await dev_a.publish(f"devices/{a}/telemetry", telemetry({"t": 1, "h": 50}), qos=1)
        await dev_b.publish(f"devices/{b}/telemetry", telemetry({"t": 2}), qos=1)
        (first_a,) = events_of(await read_items(only_a, 1))
        berlin_events = events_of(await read_items(berlin, 2))  # its status (connected), then its telemetry
    only_a.cancel()
    berlin.cancel()
    assert (first_a.device_id, dict(first_a.telemetry.metrics)) == (a, {"t": events_pb2.Value(number=1)})
    assert [(e.type, e.device_id) for e in berlin_events] == [("status", b), ("telemetry", b)]


async def test_resume_after_a_dropped_stream_gets_exactly_the_missed_events(
    hub: Running, channel: grpc.aio.Channel, admin: Metadata, events: EventWaiter
) -> None:
    device_id = unique_id()
    request = telemetry_pb2.SubscribeRequest(filter=events_pb2.StreamFilter(devices=[device_id], types=["telemetry"]))
    async with mqtt_client(hub, device_id) as client:

        async def send(seq: int) -> None:
            await client.publish(f"devices/{device_id}/telemetry", telemetry({"n": seq}, seq=seq), qos=1)
            await events.until(lambda e: e.device_id == device_id and e.data.get("seq") == seq)

        first = stub(channel).Subscribe(request, metadata=admin)
        async with asyncio.timeout(WAIT_S):
            await first.wait_for_connection()
        await send(0)
        await send(1)
        received = events_of(await read_items(first, 2))
        first.cancel()  # the stream drops; meanwhile three more events
        for seq in (2, 3, 4):
            await send(seq)
        request.resume_from = received[-1].id
        second = stub(channel).Subscribe(request, metadata=admin)
        replayed = events_of(await read_items(second, 3))
        await send(5)
        (live,) = events_of(await read_items(second, 1))
        second.cancel()
    assert [e.telemetry.seq for e in received] == [0, 1]
    assert [e.telemetry.seq for e in replayed] == [2, 3, 4]
    assert live.telemetry.seq == 5
    ids = [e.id for e in [*received, *replayed, live]]
    assert ids == sorted(set(ids))


async def test_events_no_longer_stored_are_announced_as_a_gap(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", store={"event_retention": 1000})
    async with serve(settings) as running, grpc.aio.insecure_channel(running.address("grpc")) as channel:
        waiter = EventWaiter(running.hub.bus.subscribe("t", maxsize=5000))
        device_id = unique_id()
        async with mqtt_client(running, device_id) as client:
            for n in range(1200):
                await client.publish(f"devices/{device_id}/telemetry", telemetry({"n": n}, seq=n), qos=0)
            await waiter.until(lambda e: e.data.get("seq") == 1199, within=30)
        await waiter.status_of(device_id, online=False)
        oldest, _ = await running.hub.store.event_bounds()
        assert oldest > 1
        admin = bearer(running.hub.first_token)
        call = stub(channel).Subscribe(telemetry_pb2.SubscribeRequest(resume_from=0), metadata=admin)
        gap, first = (await read_items(call, 2))[:2]
        call.cancel()
        connect = hub_pb2_grpc.HubServiceStub(channel).Connect(metadata=admin)  # the same on Connect
        await connect.write(hub_pb2.ClientMessage(subscribe=hub_pb2.SubscribeMessage(id="all", resume_from=0)))
        async with asyncio.timeout(WAIT_S):
            subscribed, replayed = [await connect.read() for _ in range(2)]
        connect.cancel()
    assert isinstance(subscribed, hub_pb2.ServerMessage)
    assert subscribed.subscribed.subscription == "all"
    assert isinstance(replayed, hub_pb2.ServerMessage)
    assert (replayed.events.subscription, replayed.events.gap, replayed.events.events[0]) == ("all", gap, first)
    assert isinstance(gap, events_pb2.Gap)
    assert (gap.missed, gap.after_id, gap.reason) == (oldest - 1, 0, "no longer stored")
    assert isinstance(first, events_pb2.Event)
    assert first.id == oldest


async def test_a_stream_too_slow_for_its_queue_ends_with_resource_exhausted(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", grpc={"port": 0, "queue_size": 1, "max_dropped": 2})
    async with serve(settings) as running, grpc.aio.insecure_channel(running.address("grpc")) as channel:
        device_id = unique_id()
        call = stub(channel).Subscribe(telemetry_pb2.SubscribeRequest(), metadata=bearer(running.hub.first_token))
        async with asyncio.timeout(WAIT_S):
            await call.wait_for_connection()
        async with mqtt_client(running, device_id) as client:
            (connected,) = events_of(await read_items(call, 1))  # attached: the device's status event reached it
            payload = json.dumps({"metrics": {"n": 1}}).encode()
            for _ in range(500):  # more than one ingest batch's worth, never read in between
                await client.publish(f"devices/{device_id}/telemetry", payload, qos=0)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await read_to_the_end(call)
        metrics = running.hub.metrics.render().decode()
    assert connected.type == "status"
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fell too far behind" in (ended.value.details() or "")
    assert 'iothub_stream_disconnected_slow_total{channel="grpc"} 1.0' in metrics


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (telemetry_pb2.SubscribeRequest(filter=events_pb2.StreamFilter(types=["weather"])),
         "field 'filter.types': 'weather' is not one of"),
        (telemetry_pb2.SubscribeRequest(filter=events_pb2.StreamFilter(devices=["a b"])), "field 'filter.devices'"),
        (telemetry_pb2.SubscribeRequest(filter=events_pb2.StreamFilter(labels=["x"])), "field 'filter.labels'"),
        (telemetry_pb2.SubscribeRequest(resume_from=10**9), "resume_from 1000000000 is ahead of the newest event"),
    ],
)  # fmt: skip
async def test_bad_subscriptions(
    channel: grpc.aio.Channel, admin: Metadata, request_: telemetry_pb2.SubscribeRequest, message: str
) -> None:
    call = stub(channel).Subscribe(request_, metadata=admin)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await read_to_the_end(call)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (failed.value.details() or "")


async def test_a_revoked_token_ends_the_stream(hub: Running, channel: grpc.aio.Channel) -> None:
    record, secret = hub.hub.registry.create_token(Scope.READ, "revoke-me")
    call = stub(channel).Subscribe(telemetry_pb2.SubscribeRequest(), metadata=bearer(secret))
    async with asyncio.timeout(WAIT_S):
        await call.wait_for_connection()
    hub.hub.registry.revoke_token(record.id)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await read_to_the_end(call)  # the watchdog looks once a second
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"API token {record.id!r} has been revoked" in (ended.value.details() or "")
