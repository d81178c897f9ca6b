"""MQTT 3.1.1 packets after CONNECT, as pure functions: bytes in, packets out, and back.

:class:`PacketReader` is fed whatever the socket produced and yields whole packets; it never awaits.
Encoders return the bytes of one packet. Anything that breaks the protocol raises
:class:`ProtocolViolation`, after which the connection must be closed [MQTT-4.8.0-1].
"""

from __future__ import annotations

import struct
from typing import NamedTuple

CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

SUBACK_FAILURE = 0x80
PINGRESP_BYTES = b"\xd0\x00"
_U16 = struct.Struct("!H")
# the flags each fixed header must carry [MQTT-2.2.2-1, MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1]
_FLAGS = {PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBSCRIBE: 2, UNSUBSCRIBE: 2, PINGREQ: 0, DISCONNECT: 0}


class ProtocolViolation(Exception):
    """The client broke MQTT 3.1.1; the message says how."""


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None


class Ack(NamedTuple):
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""

    kind: int
    packet_id: int


class Subscribe(NamedTuple):
    packet_id: int
    filters: list[tuple[str, int]]


class Unsubscribe(NamedTuple):
    packet_id: int
    filters: list[str]


class Simple(NamedTuple):
    """PINGREQ, DISCONNECT, or a CONNECT sent twice."""

    kind: int


Packet = Publish | Ack | Subscribe | Unsubscribe | Simple


def _remaining_length(n: int) -> bytes:
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(data: bytes, at: int, end: int) -> tuple[str, int]:
    if at + 2 > end:
        raise ProtocolViolation("string length runs past the packet")
    n = _U16.unpack_from(data, at)[0]
    at += 2
    if at + n > end:
        raise ProtocolViolation("string runs past the packet")
    try:
        text = data[at : at + n].decode()
    except UnicodeDecodeError:
        raise ProtocolViolation("a topic is not valid UTF-8 [MQTT-1.5.3-1]") from None
    if "\x00" in text:
        raise ProtocolViolation("a topic contains U+0000 [MQTT-1.5.3-2]")
    return text, at + n


class PacketReader:
    """Incremental decoder: ``feed(data)`` then iterate :meth:`packets` until it is empty.

    ``max_packet`` bounds one packet's size (fixed header excluded); a larger packet is a violation,
    reported as soon as its length is known, before its body is buffered.
    """

    def __init__(self, max_packet: int) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def packets(self) -> list[Packet]:
        buf = self._buf
        out: list[Packet] = []
        at = 0
        end = len(buf)
        while end - at >= 2:
            length, shift, i, complete = 0, 0, at + 1, False
            while i < end:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    complete = True
                    break
                shift += 7
                if shift > 21:
                    raise ProtocolViolation("malformed remaining length [MQTT-2.2.3]")
            if not complete:
                break  # the length itself is not all here yet
            if length > self.max_packet:
                raise ProtocolViolation(f"a packet of {length} bytes is over the {self.max_packet}-byte limit")
            if i + length > end:
                break
            out.append(_decode(buf[at], bytes(buf[i : i + length])))
            at = i + length
        if at:
            del buf[:at]
        return out


def _decode(first: int, body: bytes) -> Packet:
    kind, flags = first >> 4, first & 0x0F
    if kind == PUBLISH:
        return _decode_publish(flags, body)
    if kind in _FLAGS and flags != _FLAGS[kind]:
        raise ProtocolViolation(f"packet type {kind} with reserved flags {flags:#x} [MQTT-2.2.2-2]")
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        if len(body) != 2:
            raise ProtocolViolation(f"packet type {kind} must carry exactly a packet id")
        return Ack(kind, _U16.unpack(body)[0])
    if kind == SUBSCRIBE:
        packet_id, filters = _U16.unpack_from(body, 0)[0] if len(body) >= 2 else 0, []
        at = 2
        while at < len(body):
            topic_filter, at = _string(body, at, len(body))
            if at >= len(body):
                raise ProtocolViolation("SUBSCRIBE filter without its QoS byte")
            qos = body[at]
            if qos > 2:
                raise ProtocolViolation(f"SUBSCRIBE with QoS byte {qos:#x} [MQTT-3.8.3-4]")
            filters.append((topic_filter, qos))
            at += 1
        if not filters:
            raise ProtocolViolation("SUBSCRIBE without a filter [MQTT-3.8.3-3]")
        return Subscribe(packet_id, filters)
    if kind == UNSUBSCRIBE:
        packet_id, names = _U16.unpack_from(body, 0)[0] if len(body) >= 2 else 0, []
        at = 2
        while at < len(body):
            name, at = _string(body, at, len(body))
            names.append(name)
        if not names:
            raise ProtocolViolation("UNSUBSCRIBE without a filter [MQTT-3.10.3-2]")
        return Unsubscribe(packet_id, names)
    if kind in (PINGREQ, DISCONNECT, CONNECT):
        return Simple(kind)
    raise ProtocolViolation(f"a client may not send packet type {kind}")


def _decode_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise ProtocolViolation("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
    topic, at = _string(body, 0, len(body))
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolViolation(f"PUBLISH to {topic!r}: a topic name is non-empty, no wildcards [MQTT-3.3.2-2]")
    packet_id = None
    if qos:
        if at + 2 > len(body):
            raise ProtocolViolation("PUBLISH QoS > 0 without a packet id")
        packet_id = _U16.unpack_from(body, at)[0]
        at += 2
    return Publish(topic, body[at:], qos, bool(flags & 1), bool(flags & 8), packet_id)


def encode_publish(
    topic: bytes, payload: bytes, qos: int, retain: bool, packet_id: int | None, dup: bool = False
) -> bytes:
    """One PUBLISH; ``topic`` is already UTF-8 (it is encoded once per message, not per receiver)."""
    header = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    head = _U16.pack(len(topic)) + topic
    if qos:
        head += _U16.pack(packet_id or 0)
    return bytes((header,)) + _remaining_length(len(head) + len(payload)) + head + payload


def encode_ack(kind: int, packet_id: int) -> bytes:
    return bytes(((kind << 4) | (2 if kind == PUBREL else 0), 2)) + _U16.pack(packet_id)


def encode_suback(packet_id: int, codes: list[int]) -> bytes:
    body = _U16.pack(packet_id) + bytes(codes)
    return bytes((SUBACK << 4,)) + _remaining_length(len(body)) + body


def encode_unsuback(packet_id: int) -> bytes:
    return bytes((UNSUBACK << 4, 2)) + _U16.pack(packet_id)
