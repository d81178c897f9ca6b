"""The MQTT codec fed bytes, no sockets."""

from __future__ import annotations

import pytest

from iothub.mqtt.codec import (
    PUBREL,
    Ack,
    Connect,
    PacketReader,
    ProtocolViolation,
    Publish,
    Simple,
    Subscribe,
    UnacceptableProtocol,
    Unsubscribe,
    Will,
    decode_connect,
    encode_publish,
)
from tests.mqtt_raw import ack_packet, connect_packet, packet, publish_packet, subscribe_packet


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


def _connect_body(data: bytes) -> bytes:
    reader = PacketReader(1 << 20)
    reader.feed(data)
    frame = reader.frame()
    assert frame is not None
    assert frame[0] == 0x10
    return frame[1]


def test_a_connect_decodes_with_every_field() -> None:
    data = connect_packet("c-1", username="u", password="p\u00e9", will=("w/t", b"\x00bye"), keepalive=45, clean=False)
    assert decode_connect(_connect_body(data)) == Connect(
        "c-1", False, 45, Will("w/t", b"\x00bye", 1, False), "u", "p\u00e9".encode()
    )
    assert decode_connect(_connect_body(connect_packet(""))) == Connect("", True, 30, None, None, None)


def test_a_frame_waits_for_the_whole_packet_and_leaves_the_rest() -> None:
    data = connect_packet("c") + bytes([0xC0, 0])
    reader = PacketReader(1 << 20)
    reader.feed(data[:5])
    assert reader.frame() is None
    reader.feed(data[5:])
    assert reader.frame() is not None
    assert reader.packets() == [Simple(12)]  # what came after the CONNECT is still there


@pytest.mark.parametrize(("protocol", "level"), [("MQIsdp", 3), ("MQTT", 3), ("MQTT", 5), ("MQIsdp", 4)])
def test_other_mqtt_versions_are_unacceptable(protocol: str, level: int) -> None:
    with pytest.raises(UnacceptableProtocol, match=r"only MQTT 3\.1\.1"):
        decode_connect(_connect_body(connect_packet("c", protocol=protocol, level=level)))


def _with_flags(flags: int, payload: bytes = b"\x00\x01c") -> bytes:
    return b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x1e" + payload


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\x00\x04HTTP\x04\x02\x00\x1e\x00\x01c", "protocol name 'HTTP'"),
        (b"\x00\x04MQTT\x04", "cut short"),
        (_with_flags(0x03), "reserved flag"),
        (_with_flags(0x0A), "Will QoS or retain without a Will"),
        (_with_flags(0x22), "Will QoS or retain without a Will"),
        (_with_flags(0x1E), "Will QoS 3"),
        (_with_flags(0x42, b"\x00\x01c\x00\x01p"), "password without a user name"),
        (_with_flags(0x06, b"\x00\x01c\x00\x03a/#\x00\x00"), "no wildcards"),
        (_with_flags(0x02, b"\x00\x01cextra"), "5 bytes its flags do not announce"),
        (_with_flags(0x82, b"\x00\x01c"), "string length runs past"),
        (_with_flags(0x02, b"\x00\x02\xff\xfe"), "UTF-8"),
    ],
)
def test_connect_violations_are_named(body: bytes, problem: str) -> None:
    with pytest.raises(ProtocolViolation, match=problem) as caught:
        decode_connect(body)
    assert not isinstance(caught.value, UnacceptableProtocol)
