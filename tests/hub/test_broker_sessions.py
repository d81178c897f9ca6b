"""The hub's MQTT server core against real clients: durable ack, sessions across restarts, queue policy,
QoS 2 exactly once, and what a misbehaving client costs (only its own connection)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from iothub.hub.presence import PresenceReason
from iothub.runner import Running, serve
from tests.conftest import (
    EventWaiter,
    device_secret,
    hub_settings,
    lock_store,
    mqtt_client,
    service_client,
    telemetry,
    unique_id,
)
from tests.mqtt_raw import ack_packet, packet, publish_packet, raw_connect, read_packet, subscribe_packet

WAIT_S = 8.0


def metric(running: Running, name: str, **labels: str) -> float:
    value = running.hub.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_telemetry_is_acknowledged_only_once_stored(tmp_path: Path) -> None:
    """Durable ack: no PUBACK while the store cannot commit; when it comes, the point is stored."""
    settings = hub_settings(tmp_path / "data")
    device = unique_id()
    async with serve(settings) as running:
        committed = EventWaiter(running.hub.bus.subscribe("committed"))
        secret = device_secret(running, device)
        reader, writer, ack = await raw_connect(running.ports["mqtt"], device, username=device, password=secret)
        assert ack.body[1] == 0
        topic = f"devices/{device}/telemetry"
        writer.write(publish_packet(topic, telemetry({"t": 1.0}, seq=1), qos=1, packet_id=1))
        assert (await read_packet(reader)).packet_id == 1
        # Lock the store only once the first message is really committed (its event is out): locked any
        # earlier, ingest would still be writing the first and never take the second, and an ack sent
        # before the commit could go unnoticed.
        await committed.telemetry_from(device)
        blocker = await lock_store(settings.data_dir / "iothub.db")  # the store cannot commit
        try:
            writer.write(publish_packet(topic, telemetry({"t": 2.0}, seq=2), qos=1, packet_id=2))
            writer.write(publish_packet("not/allowed", b"", qos=1, packet_id=3))  # acked at once, but in order
            with pytest.raises(TimeoutError):
                await read_packet(reader, within=1.0)
        finally:
            blocker.rollback()
            blocker.close()
        acks = [await read_packet(reader, within=WAIT_S), await read_packet(reader, within=WAIT_S)]
        assert [(a.kind, a.packet_id) for a in acks] == [(4, 2), (4, 3)]  # PUBACKs in publish order
        stored = await running.hub.store.query(device, ["t"], 0, 2**62, None, "last", 10)  # type: ignore[arg-type]
        assert [v for _, v in stored[0].points] == [1.0, 2.0]
        writer.close()


async def test_without_durable_ack_the_puback_does_not_wait(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", mqtt={"durable_ack": False, "ws_port": None})
    device = unique_id()
    async with serve(settings) as running:
        secret = device_secret(running, device)
        reader, writer, _ = await raw_connect(running.ports["mqtt"], device, username=device, password=secret)
        blocker = await lock_store(settings.data_dir / "iothub.db")
        try:
            writer.write(publish_packet(f"devices/{device}/telemetry", telemetry({"t": 1}), qos=1, packet_id=9))
            assert (await read_packet(reader)).packet_id == 9
        finally:
            blocker.rollback()
            blocker.close()
        writer.close()


async def test_sessions_and_retained_messages_survive_a_restart(tmp_path: Path) -> None:
    """Binary payloads intact; a message acknowledged before the restart is not sent again."""
    settings = hub_settings(tmp_path / "data", mqtt={"allow_anonymous": True, "ws_port": None})
    binary = bytes(range(256)) * 4
    async with serve(settings) as running:
        port = running.ports["mqtt"]
        reader, writer, _ = await raw_connect(port, "sleeper", clean=False)
        writer.write(subscribe_packet(1, "restart/+", 1))
        assert (await read_packet(reader)).kind == 9
        async with aiomqtt.Client("127.0.0.1", port, identifier="restart-pub") as pub:
            await pub.publish("restart/acked", b"seen before", qos=1)
            delivered = await read_packet(reader)
            writer.write(ack_packet(4, delivered.packet_id))  # acknowledged: must not come back
            await pub.publish("restart/state", binary, qos=1, retain=True)
            retained = await read_packet(reader)
            writer.write(ack_packet(4, retained.packet_id))
            writer.write(bytes([0xE0, 0]))  # DISCONNECT, then more arrives while away
            await writer.drain()
            writer.close()
            await pub.publish("restart/queued", b"\x00\xff queued", qos=1)
    async with serve(settings) as running:
        port = running.ports["mqtt"]
        reader, writer, ack = await raw_connect(port, "sleeper", clean=False)
        assert ack.body[0] == 1  # session present after the restart
        queued = await read_packet(reader)
        assert (queued.topic, queued.payload) == ("restart/queued", b"\x00\xff queued")
        writer.write(ack_packet(4, queued.packet_id))
        with pytest.raises(TimeoutError):  # nothing else: the acknowledged message is not replayed
            await read_packet(reader, within=0.5)
        writer.close()
        async with aiomqtt.Client("127.0.0.1", port, identifier="late") as late:
            await late.subscribe("restart/state", qos=1)
            async with asyncio.timeout(WAIT_S):
                message = await anext(aiter(late.messages))
        assert (message.payload, message.retain) == (binary, True)
        assert retained.payload == binary


async def test_a_full_offline_queue_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", mqtt={"allow_anonymous": True, "ws_port": None, "max_queued": 5})
    async with serve(settings) as running:
        port = running.ports["mqtt"]
        reader, writer, _ = await raw_connect(port, "away", clean=False)
        writer.write(subscribe_packet(1, "queue/x", 1))
        assert (await read_packet(reader)).kind == 9
        writer.write(bytes([0xE0, 0]))
        writer.close()
        async with aiomqtt.Client("127.0.0.1", port, identifier="busy") as pub:
            for n in range(8):
                await pub.publish("queue/x", str(n).encode(), qos=1)
        reader, writer, _ = await raw_connect(port, "away", clean=False)
        got = [(await read_packet(reader)).payload for _ in range(5)]
        writer.close()
        assert got == [b"3", b"4", b"5", b"6", b"7"]
        assert metric(running, "iothub_mqtt_dropped_total", reason="queue_full") == 3


async def test_the_inflight_window_holds_the_rest_until_acknowledged(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", mqtt={"allow_anonymous": True, "ws_port": None, "max_inflight": 2})
    async with serve(settings) as running:
        port = running.ports["mqtt"]
        reader, writer, _ = await raw_connect(port, "slow-acker")
        writer.write(subscribe_packet(1, "window/x", 1))
        assert (await read_packet(reader)).kind == 9
        async with aiomqtt.Client("127.0.0.1", port, identifier="fast") as pub:
            for n in range(4):
                await pub.publish("window/x", str(n).encode(), qos=1)
        first = [await read_packet(reader), await read_packet(reader)]
        with pytest.raises(TimeoutError):
            await read_packet(reader, within=0.5)  # the window is full
        writer.write(ack_packet(4, first[0].packet_id))
        third = await read_packet(reader)
        writer.close()
        assert [p.payload for p in [*first, third]] == [b"0", b"1", b"2"]


async def test_qos2_from_a_client_is_routed_once_however_often_it_is_resent(hub: Running) -> None:
    """[MQTT-4.3.3-2] a resent QoS 2 PUBLISH (same packet id, before PUBREL) is not routed again."""
    async with service_client(hub, "qos2-watch") as watcher:
        await watcher.subscribe("devices/+/telemetry", qos=2)
        device = unique_id()
        secret = device_secret(hub, device)
        reader, writer, _ = await raw_connect(hub.ports["mqtt"], device, username=device, password=secret)
        topic = f"devices/{device}/telemetry"
        writer.write(publish_packet(topic, telemetry({"once": 1}), qos=2, packet_id=7))
        assert (await read_packet(reader)).kind == 5  # PUBREC
        writer.write(publish_packet(topic, telemetry({"once": 1}), qos=2, packet_id=7, dup=True))
        assert (await read_packet(reader)).kind == 5  # PUBREC again
        writer.write(ack_packet(6, 7))  # PUBREL
        assert (await read_packet(reader)).kind == 7  # PUBCOMP
        # the end marker at the same QoS: a QoS 0 one would reach the watcher before a QoS 2 message
        # still in its PUBREC/PUBREL exchange, and end the count early
        writer.write(publish_packet(topic, telemetry({"end": 1}), qos=2, packet_id=8))
        assert (await read_packet(reader)).kind == 5
        writer.write(ack_packet(6, 8))
        assert (await read_packet(reader)).kind == 7
        got = []
        async with asyncio.timeout(WAIT_S):
            async for message in watcher.messages:
                got.append(message.payload)
                if b"end" in bytes(message.payload):
                    break
        writer.close()
        assert got == [telemetry({"once": 1}), telemetry({"end": 1})], got


async def test_a_client_breaking_the_protocol_loses_only_its_connection(hub: Running, events: EventWaiter) -> None:
    async with mqtt_client(hub, unique_id()) as bystander:
        port = hub.ports["mqtt"]
        device = unique_id()
        secret = device_secret(hub, device)
        cases = {
            "oversized": publish_packet(f"devices/{device}/telemetry", b"x" * (1024 * 1024 + 1)),
            "qos 3": packet(3, 6, b"\x00\x01a"),
            "wildcard topic": publish_packet("devices/+/telemetry", b"{}"),
            "reserved flags": packet(4, 1, b"\x00\x01"),
            "second connect": packet(1, 0, b""),
        }
        for case, data in cases.items():
            reader, writer, ack = await raw_connect(port, device, username=device, password=secret)
            assert ack.body[1] == 0, case
            writer.write(data)
            try:
                async with asyncio.timeout(WAIT_S):
                    assert await reader.read() == b"", case  # closed
            except ConnectionResetError:
                pass  # closed with our unread bytes still in its buffer: a reset
            writer.close()
        assert metric(hub, "iothub_mqtt_protocol_errors_total") == len(cases)
        await bystander.publish("probe", b"", qos=1)  # the hub serves everyone else as before


async def test_a_client_held_back_by_the_store_can_still_be_closed(tmp_path: Path) -> None:
    """While the store is behind the hub stops reading a client; closing it must not wait for the store."""
    settings = hub_settings(tmp_path / "data", mqtt={"ws_port": None, "max_unacked": 1})
    device = unique_id()
    async with serve(settings) as running:
        secret = device_secret(running, device)
        reader, writer, _ = await raw_connect(running.ports["mqtt"], device, username=device, password=secret)
        blocker = await lock_store(settings.data_dir / "iothub.db")
        try:
            for n in range(1, 4):
                writer.write(publish_packet(f"devices/{device}/telemetry", telemetry({"n": n}), qos=1, packet_id=n))
            await writer.drain()
            with pytest.raises(TimeoutError):
                await read_packet(reader, within=0.5)  # held: no PUBACK
            assert await running.hub.broker.disconnect(device, PresenceReason.DISABLED)
            async with asyncio.timeout(WAIT_S):
                assert await reader.read() == b""
                while device in running.hub.broker.connected_devices():  # noqa: ASYNC110 - bounded; no event
                    await asyncio.sleep(0.02)
        finally:
            blocker.rollback()
            blocker.close()
            writer.close()
