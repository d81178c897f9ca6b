"""The MQTT codec fed bytes, no sockets."""

from __future__ import annotations

import pytest

from iothub.mqtt.codec import (
    PUBREL,
    Ack,
    PacketReader,
    ProtocolViolation,
    Publish,
    Simple,
    Subscribe,
    Unsubscribe,
    encode_publish,
)
from tests.mqtt_raw import ack_packet, packet, publish_packet, subscribe_packet


def decode(data: bytes, max_packet: int = 1 << 20) -> list[object]:
    reader = PacketReader(max_packet)
    reader.feed(data)
    return list(reader.packets())


def test_packets_split_anywhere_decode_the_same() -> None:
    big = b"p" * 300  # a two-byte remaining length
    stream = (
        publish_packet("a/b", big, qos=1, packet_id=5, retain=True)
        + subscribe_packet(2, "a/#", 2)
        + ack_packet(PUBREL, 9)
        + packet(10, 2, b"\x00\x03\x00\x01x")
        + bytes([0xC0, 0])
    )
    expected = [
        Publish("a/b", big, 1, True, False, 5),
        Subscribe(2, [("a/#", 2)]),
        Ack(PUBREL, 9),
        Unsubscribe(3, ["x"]),
        Simple(12),
    ]
    assert decode(stream) == expected
    reader = PacketReader(1 << 20)
    got: list[object] = []
    for i in range(len(stream)):  # one byte at a time
        reader.feed(stream[i : i + 1])
        got.extend(reader.packets())
    assert got == expected


def test_encode_publish_round_trips() -> None:
    data = encode_publish(b"t/\xc3\xa9", b"\x00\xff", 2, False, 77, dup=True)
    assert decode(data) == [Publish("t/é", b"\x00\xff", 2, False, True, 77)]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (packet(3, 6, b"\x00\x01a"), "QoS 3"),
        (publish_packet("a/+", b""), "wildcards"),
        (packet(3, 0, b"\x00\x00"), "non-empty"),
        (packet(3, 0, b"\x00\x02\xff\xfe"), "UTF-8"),
        (packet(3, 0, b"\x00\x02a\x00"), r"U\+0000"),
        (packet(4, 1, b"\x00\x01"), "reserved flags"),
        (packet(4, 0, b"\x00\x01\x02"), "exactly a packet id"),
        (packet(8, 2, b"\x00\x01"), "without a filter"),
        (packet(8, 2, b"\x00\x01\x00\x01a\x03"), "QoS byte"),
        (packet(8, 2, b"\x00\x01\x00\x01a"), "QoS byte"),
        (packet(10, 2, b"\x00\x01"), "without a filter"),
        (packet(2, 0, b"\x00\x00"), "may not send"),
        (bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), "remaining length"),
        (packet(3, 2, b"\x00\x01a"), "packet id"),
        (packet(3, 0, b"\x00\x05ab"), "runs past"),
    ],
)
def test_protocol_violations_are_named(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolViolation, match=problem):
        decode(data)


def test_an_oversized_packet_is_refused_before_its_body_arrives() -> None:
    reader = PacketReader(1000)
    reader.feed(publish_packet("a", b"x" * 2000)[:4])
    with pytest.raises(ProtocolViolation, match="over the 1000-byte limit"):
        reader.packets()
