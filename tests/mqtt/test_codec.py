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


U = "a string (topic, client id, user name)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (packet(3, 6, b"\x00\x01a"), "PUBLISH with QoS 3 [MQTT-3.3.1-4]"),
        (publish_packet("a/+", b""), "PUBLISH to 'a/+': a topic name is non-empty, no wildcards [MQTT-3.3.2-2]"),
        (publish_packet("a/#", b""), "PUBLISH to 'a/#': a topic name is non-empty, no wildcards [MQTT-3.3.2-2]"),
        (packet(3, 0, b"\x00\x00"), "PUBLISH to '': a topic name is non-empty, no wildcards [MQTT-3.3.2-2]"),
        (packet(3, 0, b"\x00\x02\xff\xfe"), f"{U} is not valid UTF-8 [MQTT-1.5.3-1]"),
        (packet(3, 0, b"\x00\x02a\x00"), f"{U} contains U+0000 [MQTT-1.5.3-2]"),
        (packet(3, 0, b"\x00"), "string length runs past the packet"),
        (packet(3, 0, b"\x00\x05ab"), "string runs past the packet"),
        (packet(3, 2, b"\x00\x01a"), "PUBLISH QoS > 0 without a packet id"),
        (packet(3, 2, b"\x00\x01a\x00"), "PUBLISH QoS > 0 without a packet id"),
        (packet(4, 1, b"\x00\x01"), "packet type 4 with reserved flags 0x1 [MQTT-2.2.2-2]"),
        (packet(4, 0, b"\x00\x01\x02"), "packet type 4 must carry exactly a packet id"),
        (packet(8, 2, b"\x00\x01"), "SUBSCRIBE without a filter [MQTT-3.8.3-3]"),
        (packet(8, 2, b"\x00"), "SUBSCRIBE without a filter [MQTT-3.8.3-3]"),
        (packet(8, 2, b"\x00\x01\x00\x01a\x03"), "SUBSCRIBE with QoS byte 0x3 [MQTT-3.8.3-4]"),
        (packet(8, 2, b"\x00\x01\x00\x01a"), "SUBSCRIBE filter without its QoS byte"),
        (packet(8, 2, b"\x00\x01\x00\x01a\x01\x00\x01b"), "SUBSCRIBE filter without its QoS byte"),
        (packet(10, 2, b"\x00\x01"), "UNSUBSCRIBE without a filter [MQTT-3.10.3-2]"),
        (packet(10, 2, b"\x00"), "UNSUBSCRIBE without a filter [MQTT-3.10.3-2]"),
        (packet(2, 0, b"\x00\x00"), "a client may not send packet type 2"),
        (bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), "malformed remaining length [MQTT-2.2.3]"),
        (publish_packet("a", b"", qos=0, dup=True), "PUBLISH with QoS 0 and DUP set [MQTT-3.3.1-2]"),
        (publish_packet("a", b"", qos=1, packet_id=0), "PUBLISH with packet id 0 [MQTT-2.3.1-1]"),
        (packet(8, 2, b"\x00\x00\x00\x01a\x00"), "SUBSCRIBE with packet id 0 [MQTT-2.3.1-1]"),
        (packet(10, 2, b"\x00\x00\x00\x01a"), "UNSUBSCRIBE with packet id 0 [MQTT-2.3.1-1]"),
        (packet(12, 0, b"\x00"), "packet type 12 with a body of 1 bytes [MQTT-3.12.1, 3.14.1]"),
        (packet(14, 0, b"\x00\x00"), "packet type 14 with a body of 2 bytes [MQTT-3.12.1, 3.14.1]"),
    ],
)
def test_protocol_violations_are_named(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation) as caught:
        decode(data)
    assert str(caught.value) == message


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


WILL_TOPIC = "Will topic %s: a topic name is non-empty, no wildcards [MQTT-3.3.2-2]"


def _with_flags(flags: int, payload: bytes = b"\x00\x01c") -> bytes:
    return b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x1e" + payload


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00\x04HTTP\x04\x02\x00\x1e\x00\x01c", "CONNECT with protocol name 'HTTP' [MQTT-3.1.2-1]"),
        (b"\x00\x04MQTT\x04", "CONNECT cut short in its variable header"),
        (b"\x00\x04MQTT\x04\x02\x00", "CONNECT cut short in its variable header"),
        (_with_flags(0x03), "CONNECT with the reserved flag set [MQTT-3.1.2-3]"),
        (_with_flags(0x0A), "Will QoS or retain without a Will [MQTT-3.1.2-13, 3.1.2-15]"),
        (_with_flags(0x22), "Will QoS or retain without a Will [MQTT-3.1.2-13, 3.1.2-15]"),
        (_with_flags(0x1E), "Will QoS 3 [MQTT-3.1.2-14]"),
        (_with_flags(0x42, b"\x00\x01c\x00\x01p"), "a password without a user name [MQTT-3.1.2-22]"),
        (_with_flags(0x06, b"\x00\x01c\x00\x03a/#\x00\x00"), WILL_TOPIC % "'a/#'"),
        (_with_flags(0x06, b"\x00\x01c\x00\x03a/+\x00\x00"), WILL_TOPIC % "'a/+'"),
        (_with_flags(0x06, b"\x00\x01c\x00\x00\x00\x00"), WILL_TOPIC % "''"),
        (_with_flags(0x06, b"\x00\x01c\x00\x01w\x00"), "binary length runs past the packet"),
        (_with_flags(0x06, b"\x00\x01c\x00\x01w\x00\x05ab"), "binary data runs past the packet"),
        (_with_flags(0xC2, b"\x00\x01c\x00\x01u\x00\x02p"), "binary data runs past the packet"),
        (_with_flags(0x02, b"\x00\x01cextra"), "CONNECT carries 5 bytes its flags do not announce"),
        (_with_flags(0x82, b"\x00\x01c"), "string length runs past the packet"),
        (_with_flags(0x02, b"\x00\x02\xff\xfe"), f"{U} is not valid UTF-8 [MQTT-1.5.3-1]"),
    ],
)
def test_connect_violations_are_named(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation) as caught:
        decode_connect(body)
    assert not isinstance(caught.value, UnacceptableProtocol)
    assert str(caught.value) == message
