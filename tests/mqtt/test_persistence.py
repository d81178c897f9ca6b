"""Sessions and retained messages through a snapshot saved to SQLite and restored into a new server."""

from __future__ import annotations

from pathlib import Path

import pytest

from iothub.mqtt.persistence import BrokerState
from tests.mqtt.stubs import mqtt_server
from tests.mqtt_raw import ack_packet, raw_connect, read_packet, subscribe_packet

DISCONNECT = bytes([0xE0, 0])
BINARY = bytes(range(256))


async def test_a_persistent_session_and_retained_messages_survive_a_new_server(tmp_path: Path) -> None:
    state = BrokerState(tmp_path / "broker.db")
    state.open()
    try:
        async with mqtt_server() as s:
            reader, writer, _ = await raw_connect(s.port, "sleeper", clean=False)
            writer.write(subscribe_packet(1, "news/+", 1))
            assert (await read_packet(reader)).kind == 9
            s.server.route(None, "news/seen", b"acknowledged", 1)
            seen = await read_packet(reader)
            writer.write(ack_packet(4, seen.packet_id))
            writer.write(DISCONNECT)
            await s.hooks.reason_for("sleeper")
            writer.close()
            s.server.route(None, "news/queued", BINARY, 1)  # queued while it is away
            s.server.route(None, "other/kept", b"retained", 1, retain=True)
            assert s.server.dirty
            state.save(s.server.snapshot())
        async with mqtt_server() as s:
            s.server.restore(state.load())
            reader, writer, ack = await raw_connect(s.port, "sleeper", clean=False)
            assert ack.body[0] == 1  # session present
            queued = await read_packet(reader)
            assert (queued.topic, queued.payload, queued.retain) == ("news/queued", BINARY, False)
            writer.write(ack_packet(4, queued.packet_id))
            with pytest.raises(TimeoutError):  # the message acknowledged before the snapshot is not replayed
                await read_packet(reader, within=0.5)
            writer.write(subscribe_packet(2, "other/#", 1))
            assert (await read_packet(reader)).kind == 9
            retained = await read_packet(reader)
            assert (retained.topic, retained.payload, retained.retain) == ("other/kept", b"retained", True)
            writer.close()
    finally:
        state.close()
