"""Ingest through the real embedded broker: what is stored, what is refused and why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from iothub.hub.events import EventType, HubEvent
from iothub.runner import Running, serve
from tests.conftest import EventWaiter, hub_settings, lock_store, mqtt_client, service_client, telemetry, unique_id


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_telemetry_is_stored_and_published(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        await client.publish(
            f"devices/{device}/telemetry", telemetry({"temperature": 21.5, "open": True}, seq=1), qos=1
        )
        event = await events.telemetry_from(device)
    assert event.data["metrics"] == {"temperature": 21.5, "open": True}
    assert event.data["seq"] == 1
    state = hub.hub.fleet.get(device)
    assert state is not None
    assert state.latest["temperature"][1] == 21.5
    assert state.messages == 1
    series = await hub.hub.store.query(device, ["temperature", "open"], 0, now_ms() + 1000, None, "last", 10)  # type: ignore[arg-type]
    assert [s.points[0][1] for s in series] == [21.5, True]


BAD_INPUT: list[tuple[str, str, bytes, str, str]] = [
    # (case, topic suffix, payload, reason, text in the detail)
    ("malformed json", "telemetry", b'{"metrics": ', "malformed_json", "invalid JSON"),
    ("wrong type", "telemetry", telemetry({"t": [1, 2]}), "invalid", "metrics.t: must be a finite number"),
    ("unknown field", "telemetry", telemetry({"t": 1}, colour="red"), "invalid", "colour: Extra inputs"),
    ("empty metrics", "telemetry", telemetry({}), "invalid", "at least 1 item"),
    ("not utf-8", "telemetry", b'{"metrics": {"t": "\xff"}}', "not_utf8", "not UTF-8"),
    (
        "too large",
        "telemetry",
        telemetry({"t": "x" * 200, **{f"m{i}": i for i in range(200)}}, pad="y" * 70_000),
        "too_large",
        "exceeds the limit of 65536",
    ),
    ("future ts", "telemetry", telemetry({"t": 1}, ts=now_ms() + 3_600_000), "ts_in_future", "in the future"),
    ("unknown topic", "temperature", telemetry({"t": 1}), "unknown_topic", "unknown topic shape"),
    ("bad status", "status", b'{"online": "maybe"}', "invalid", "online: Input should be a valid boolean"),
]


@pytest.mark.parametrize(("case", "suffix", "payload", "reason", "detail"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
async def test_bad_input_is_refused_counted_and_loses_nothing_else(
    hub: Running,
    events: EventWaiter,
    http: Any,
    case: str,
    suffix: str,
    payload: bytes,
    reason: str,
    detail: str,
) -> None:
    device = unique_id()
    # A service account (a gateway, say) may publish any topic, so every kind of bad input reaches ingest.
    async with service_client(hub, "gateway") as client:
        await client.publish(f"devices/{device}/{suffix}", payload, qos=1)
        # The same connection then sends a good message; ingest keeps broker order, so once the good
        # one is stored the bad one has been judged.
        await client.publish(f"devices/{device}/telemetry", telemetry({"t": 2.5}), qos=1)
        await events.telemetry_from(device)
    response = await http.get(f"/api/v1/devices/{device}")
    view = response.json()
    assert view["rejected"] == {reason: 1}
    assert view["last_rejection"]["reason"] == reason
    assert detail in view["last_rejection"]["detail"]
    assert view["latest"]["t"]["value"] == 2.5
    assert view["messages"] == 1
    metrics = (await http.get("/metrics")).text
    assert f'iothub_messages_rejected_total{{reason="{reason}"}} 1.0' in metrics


async def test_a_topic_id_breaking_the_rule_is_counted_without_a_device(
    hub: Running, events: EventWaiter, http: Any
) -> None:
    good = unique_id()
    async with service_client(hub, "gateway") as client:
        await client.publish("devices/bad id!/telemetry", telemetry({"t": 1}), qos=1)
        await client.publish(f"devices/{good}/telemetry", telemetry({"t": 1}), qos=1)
        await events.telemetry_from(good)
    metrics = (await http.get("/metrics")).text
    assert 'iothub_messages_rejected_total{reason="bad_device_id"} 1.0' in metrics
    ids = [d["id"] for d in (await http.get("/api/v1/devices")).json()["devices"]]
    assert ids == [good]


async def test_other_topics_pass_through_untouched(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with service_client(hub, "listener") as listener, service_client(hub, "plant") as plant:
        await listener.subscribe("plant/#", qos=1)
        await plant.publish("plant/line1/speed", b"not json at all", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(listener.messages))
        assert message.payload == b"not json at all"
    async with mqtt_client(hub, device) as client:
        await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1)
        await events.telemetry_from(device)
    assert len(hub.hub.fleet) == 1


async def test_repeated_seq_is_dropped_and_gaps_counted(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        for seq in (1, 2, 2, 5, 4, 6):
            await client.publish(f"devices/{device}/telemetry", telemetry({"n": seq}, seq=seq), qos=1)
        await events.until(lambda e: e.device_id == device and e.data.get("seq") == 6)
    stored = [
        e.data["seq"]
        for e in events.seen
        if isinstance(e, HubEvent) and e.device_id == device and e.type == "telemetry"
    ]
    assert stored == [1, 2, 5, 4, 6]
    state = hub.hub.fleet.get(device)
    assert state is not None
    assert (state.duplicates, state.seq_gaps, state.messages) == (1, 1, 5)


async def test_a_device_timestamp_is_kept(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    ts = now_ms() - 60_000
    async with mqtt_client(hub, device) as client:
        await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1}, ts=ts), qos=0)
        event = await events.telemetry_from(device)
    assert event.ts == ts


async def test_responses_nobody_asked_for_are_refused(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        await client.publish(f"devices/{device}/responses", b'{"id": "r-1", "ok": true, "result": {"x": 1}}', qos=1)
        await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1)
        await events.telemetry_from(device)
    state = hub.hub.fleet.get(device)
    assert state is not None
    assert state.rejected == {"unknown_request": 1}
    assert state.last_rejection is not None
    assert "response id 'r-1': no command is waiting for it" in state.last_rejection["detail"]
    assert not [e for e in events.seen if isinstance(e, HubEvent) and e.type is EventType.COMMAND_RESULT]


async def _crash(client: aiomqtt.Client) -> None:
    """End the TCP connection without DISCONNECT, as a crashed device would."""
    sock = client._client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(aiomqtt.MqttError):
        await client.__aexit__(None, None, None)


async def _announce(client: aiomqtt.Client, device: str, events: EventWaiter) -> None:
    await client.publish(f"devices/{device}/status", b'{"online": true}', qos=1, retain=True)
    await events.status_of(device, online=True)


async def test_presence_clean_disconnect(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        await _announce(client, device, events)
    event = await events.status_of(device, online=False)
    assert event.data["reason"] == "clean_disconnect"


async def test_presence_last_will(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    will = aiomqtt.Will(f"devices/{device}/status", b'{"online": false, "reason": "lost"}', qos=1, retain=True)
    client = mqtt_client(hub, device, will=will)
    await client.__aenter__()
    await _announce(client, device, events)
    await _crash(client)
    event = await events.status_of(device, online=False)
    assert event.data["reason"] == "last_will"
    # The Will itself reached the broker's subscribers, and changed nothing more.
    async with service_client(hub, "observer") as observer:
        await observer.subscribe(f"devices/{device}/status", qos=1)
        async with asyncio.timeout(5):
            retained = await anext(aiter(observer.messages))
    assert isinstance(retained.payload, bytes)
    assert json.loads(retained.payload)["reason"] == "lost"
    assert [e.data["reason"] for e in events.seen if isinstance(e, HubEvent) and e.device_id == device] == [
        "connected",  # presence starts at CONNECT; its own "online" status changes nothing
        "last_will",
    ]


async def test_presence_connection_lost_without_will(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    client = mqtt_client(hub, device)
    await client.__aenter__()
    await _announce(client, device, events)
    await _crash(client)
    event = await events.status_of(device, online=False)
    assert event.data["reason"] == "connection_lost"


async def test_a_reconnecting_known_device_is_online_again(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        await _announce(client, device, events)
    await events.status_of(device, online=False)
    async with mqtt_client(hub, device):
        event = await events.status_of(device, online=True)
    assert event.data["reason"] == "connected"


async def test_device_reported_offline_keeps_its_words(hub: Running, events: EventWaiter) -> None:
    device = unique_id()
    async with mqtt_client(hub, device) as client:
        await _announce(client, device, events)
        await client.publish(f"devices/{device}/status", b'{"online": false, "reason": "sleeping"}', qos=1)
        event = await events.status_of(device, online=False)
    assert (event.data["reason"], event.data["detail"]) == ("reported_offline", "sleeping")


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data")
    device = unique_id()
    async with serve(settings) as running:
        waiter = EventWaiter(running.hub.bus.subscribe("t"))
        client = mqtt_client(running, device)
        await client.__aenter__()
        await _announce(client, device, waiter)
        await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1.5}, seq=10), qos=1)
        await client.publish(f"devices/{device}/telemetry", b"{", qos=1)
        await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1.6}, seq=11), qos=1)
        first = await waiter.until(lambda e: e.data.get("seq") == 11)
        # Leave with the device still connected: the hub stops under it.
    with contextlib.suppress(aiomqtt.MqttError):
        await client.__aexit__(None, None, None)
    async with serve(settings) as running:
        state = running.hub.fleet.get(device)
        assert state is not None
        assert (state.online, state.reason.value) == (False, "hub_stopped")
        assert state.latest["t"][1] == 1.6
        assert state.rejected == {"malformed_json": 1}
        waiter = EventWaiter(running.hub.bus.subscribe("t"))
        async with mqtt_client(running, device) as client:
            await client.publish(f"devices/{device}/telemetry", telemetry({"t": 9.9}, seq=11), qos=1)  # repeat
            await client.publish(f"devices/{device}/telemetry", telemetry({"t": 1.7}, seq=12), qos=1)
            again = await waiter.until(lambda e: e.data.get("seq") == 12)
        await waiter.status_of(device, online=False)  # the clean disconnect is committed too
        assert state.duplicates == 1
        assert again.id > first.id  # event ids keep rising across restarts
        replay = await running.hub.store.events_after(first.id - 1, 100)
        assert replay[0].id == first.id
        assert [(e.type.value, e.data.get("reason")) for e in replay] == [
            ("telemetry", None),
            ("status", "hub_stopped"),
            ("status", "connected"),
            ("telemetry", None),
            ("status", "clean_disconnect"),
        ]


async def test_a_locked_store_holds_ingest_and_overflow_is_counted(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", ingest={"queue_size": 100})
    device = unique_id()
    async with serve(settings) as running:
        waiter = EventWaiter(running.hub.bus.subscribe("t"))
        async with mqtt_client(running, device) as client:
            await client.publish(f"devices/{device}/telemetry", telemetry({"n": 0}, seq=0), qos=1)
            await waiter.telemetry_from(device)
            blocker = await lock_store(settings.data_dir / "iothub.db")  # another process holds the database
            try:
                for seq in range(1, 301):  # QoS 0: QoS 1 would be held back by durable ack (tested apart)
                    await client.publish(f"devices/{device}/telemetry", telemetry({"n": seq}, seq=seq), qos=0)
                # a barrier: the broker handles a client's packets in order and acks this one (which the
                # ACL drops, so ingest never sees it) once those before it are handled
                await client.publish("barrier", b"", qos=1)
                state = running.hub.fleet.get(device)
                assert state is not None
                assert state.rejected["queue_full"] >= 100
            finally:
                blocker.rollback()
                blocker.close()
            last = await waiter.until(lambda e: e.data.get("seq", 0) > 0 and e.type == "telemetry", within=30)
            assert last.data["seq"] >= 1
    async with serve(settings) as running:
        stored = await running.hub.store.query(device, ["n"], 0, now_ms() + 1000, None, "last", 1000)  # type: ignore[arg-type]
        values = [v for _, v in stored[0].points]
        state = running.hub.fleet.get(device)
        assert state is not None
        # Everything accepted into the queue was stored, and only that.
        assert len(values) == 1 + 300 - state.rejected["queue_full"]
