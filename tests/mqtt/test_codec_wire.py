"""What the codec writes and reads, byte for byte, against the examples and layouts of MQTT 3.1.1."""

from __future__ import annotations

import pytest

from iothub.mqtt.codec import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Connect,
    PacketReader,
    ProtocolViolation,
    Publish,
    Will,
    decode_connect,
    encode_ack,
    encode_connack,
    encode_publish,
    encode_suback,
    encode_unsuback,
)
from tests.mqtt_raw import connect_packet, publish_packet

# [MQTT-2.2.3] Table 2.4: the boundaries of the remaining length's 1, 2, 3 and 4 bytes
REMAINING_LENGTHS = [
    (3, b"\x03"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
]


def _publish_of_length(n: int) -> bytes:
    """A QoS 0 PUBLISH whose remaining length is ``n``: topic "t" (3 bytes) and a payload."""
    return encode_publish(b"t", b"x" * (n - 3), 0, False, None)


@pytest.mark.parametrize(("length", "encoded"), REMAINING_LENGTHS)
def test_remaining_length_is_encoded_as_the_spec_shows(length: int, encoded: bytes) -> None:
    data = _publish_of_length(length)
    assert data[1 : 1 + len(encoded)] == encoded
    assert len(data) == 1 + len(encoded) + length


@pytest.mark.parametrize(("length", "encoded"), REMAINING_LENGTHS)
def test_remaining_length_decodes_back(length: int, encoded: bytes) -> None:
    reader = PacketReader(length)  # exactly at the limit: allowed
    reader.feed(_publish_of_length(length))
    (packet,) = reader.packets()
    assert isinstance(packet, Publish)
    assert len(packet.payload) == length - 3


def test_a_packet_one_byte_over_the_limit_is_refused() -> None:
    reader = PacketReader(127)
    reader.feed(_publish_of_length(128))
    with pytest.raises(ProtocolViolation) as caught:
        reader.packets()
    assert str(caught.value) == "a packet of 128 bytes is over the 127-byte limit"


def test_a_length_split_after_its_first_byte_waits_for_the_rest() -> None:
    data = _publish_of_length(128)  # remaining length 0x80 0x01: the first byte alone says 0
    reader = PacketReader(1 << 20)
    for i in range(len(data) - 1):
        reader.feed(data[i : i + 1])
        assert reader.packets() == []
    reader.feed(data[-1:])
    assert len(reader.packets()) == 1


def test_connect_frames_of_every_length_size() -> None:
    """CONNECT is read with :meth:`PacketReader.frame`: the same length rules, the same limit."""
    for password_size in (10, 200, 20_000):
        data = connect_packet("c", username="u", password="p" * password_size)
        reader = PacketReader(len(data))
        reader.feed(data[:3])
        assert reader.frame() is None
        reader.feed(data[3:] + b"\xc0\x00")
        frame = reader.frame()
        assert frame is not None
        assert decode_connect(frame[1]).password == b"p" * password_size
    reader = PacketReader(100)
    reader.feed(connect_packet("c", username="u", password="p" * 200)[:4])
    with pytest.raises(ProtocolViolation) as caught:
        reader.frame()
    assert str(caught.value) == "a packet of 218 bytes is over the 100-byte limit"
    reader = PacketReader(1 << 20)
    reader.feed(bytes([0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
    with pytest.raises(ProtocolViolation) as caught:
        reader.frame()
    assert str(caught.value) == "malformed remaining length [MQTT-2.2.3]"


@pytest.mark.parametrize(
    ("session_present", "code", "expected"),
    [
        (True, 0, b"\x20\x02\x01\x00"),
        (False, 0, b"\x20\x02\x00\x00"),
        (True, 5, b"\x20\x02\x00\x05"),  # [MQTT-3.2.2-4] never session present with a refusal
        (False, 1, b"\x20\x02\x00\x01"),
    ],
)
def test_connack(session_present: bool, code: int, expected: bytes) -> None:
    assert encode_connack(session_present, code) == expected


def test_suback_and_unsuback() -> None:
    assert encode_suback(7, [0, 1, 2, 0x80]) == b"\x90\x06\x00\x07\x00\x01\x02\x80"
    many = encode_suback(0x0102, [1] * 200)
    assert many[:5] == b"\x90\xca\x01\x01\x02"  # remaining length 202: two bytes
    assert many[5:] == b"\x01" * 200
    assert encode_unsuback(0x0A0B) == b"\xb0\x02\x0a\x0b"


@pytest.mark.parametrize(
    ("kind", "first"), [(PUBACK, 0x40), (PUBREC, 0x50), (PUBREL, 0x62), (PUBCOMP, 0x70)]
)  # [MQTT-3.6.1-1] PUBREL alone carries flags 0010
def test_acks(kind: int, first: int) -> None:
    assert encode_ack(kind, 0x1234) == bytes([first, 2, 0x12, 0x34])


@pytest.mark.parametrize(
    ("qos", "retain", "dup", "first"),
    [
        (0, False, False, 0x30),
        (0, True, False, 0x31),
        (1, False, False, 0x32),
        (1, True, True, 0x3B),
        (2, False, True, 0x3C),
    ],
)
def test_publish_header_flags_round_trip(qos: int, retain: bool, dup: bool, first: int) -> None:
    data = encode_publish(b"a/b", b"hi", qos, retain, 9 if qos else None, dup)
    assert data[0] == first
    assert data[2:7] == b"\x00\x03a/b"
    reader = PacketReader(1 << 10)
    reader.feed(data)
    assert reader.packets() == [Publish("a/b", b"hi", qos, retain, dup, 9 if qos else None)]


def test_dup_is_off_unless_asked() -> None:
    assert encode_publish(b"t", b"", 1, False, 1)[0] == 0x32


def test_publish_flags_decode_each_on_its_own() -> None:
    reader = PacketReader(1 << 10)
    reader.feed(publish_packet("t", b"r", qos=0, retain=True) + publish_packet("t", b"q", qos=1, packet_id=3))
    assert reader.packets() == [Publish("t", b"r", 0, True, False, None), Publish("t", b"q", 1, False, False, 3)]


def test_connect_flags_decode_each_on_its_own() -> None:
    def body(**kwargs: object) -> bytes:
        reader = PacketReader(1 << 10)
        reader.feed(connect_packet("c", **kwargs))  # type: ignore[arg-type]
        frame = reader.frame()
        assert frame is not None
        return frame[1]

    assert decode_connect(body(clean=False)) == Connect("c", False, 30, None, None, None)
    assert decode_connect(body(username="u")) == Connect("c", True, 30, None, "u", None)
    assert decode_connect(body(username="u", password="")) == Connect("c", True, 30, None, "u", b"")
    assert decode_connect(body(will=("w", b""), will_qos=2)) == Connect(
        "c", True, 30, Will("w", b"", 2, False), None, None
    )
    with_retain = bytearray(body(will=("w", b"m"), will_qos=0))
    with_retain[7] |= 0x20  # the Will retain flag
    assert decode_connect(bytes(with_retain)).will == Will("w", b"m", 0, True)


def test_an_empty_payload_at_qos_1_is_a_message() -> None:
    """Empty payloads are legal at every QoS (an empty retained message clears the retained one)."""
    reader = PacketReader(1 << 10)
    reader.feed(publish_packet("t", b"", qos=1, packet_id=4, retain=True))
    assert reader.packets() == [Publish("t", b"", 1, True, False, 4)]


def test_a_connect_ending_after_its_variable_header_misses_its_client_id() -> None:
    with pytest.raises(ProtocolViolation) as caught:
        decode_connect(b"\x00\x04MQTT\x04\x02\x00\x1e")
    assert str(caught.value) == "string length runs past the packet"


def test_frame_reads_four_byte_lengths_and_allows_exactly_the_limit() -> None:
    data = _publish_of_length(2_097_152)
    reader = PacketReader(2_097_152)
    reader.feed(data)
    frame = reader.frame()
    assert frame is not None
    assert (frame[0], len(frame[1])) == (0x30, 2_097_152)
