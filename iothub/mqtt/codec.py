"""MQTT 3.1.1 packets as pure functions: bytes in, packets out, and back.

:class:`PacketReader` is fed whatever the socket produced and yields whole packets; it never awaits.
:func:`decode_connect` reads the body of a CONNECT. Encoders return the bytes of one packet.

Errors::

    ProtocolViolation         the client broke MQTT 3.1.1: close the connection [MQTT-4.8.0-1]
    └── UnacceptableProtocol  a CONNECT of another MQTT version: answer CONNACK 0x01, then close
"""

from __future__ import annotations

import struct
from typing import NamedTuple

CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# CONNACK return codes [MQTT-3.2.2.3]
ACCEPTED, UNACCEPTABLE_PROTOCOL, IDENTIFIER_REJECTED, SERVER_UNAVAILABLE, BAD_CREDENTIALS, NOT_AUTHORIZED = range(6)
SUBACK_FAILURE = 0x80
PINGRESP_BYTES = b"\xd0\x00"
_U16 = struct.Struct("!H")
# the flags each fixed header must carry [MQTT-2.2.2-1, MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1]
_FLAGS = {PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBSCRIBE: 2, UNSUBSCRIBE: 2, PINGREQ: 0, DISCONNECT: 0}


class ProtocolViolation(Exception):
    """The client broke MQTT 3.1.1; the message says how."""


class UnacceptableProtocol(ProtocolViolation):
    """A CONNECT of an MQTT version other than 3.1.1 (e.g. 3.1, ``MQIsdp`` level 3) [MQTT-3.1.2-2]."""


class Will(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Connect(NamedTuple):
    client_id: str  # may be empty [MQTT-3.1.3-6]
    clean: bool
    keep_alive: int
    will: Will | None
    username: str | None
    password: bytes | None


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
        raise ProtocolViolation("a string (topic, client id, user name) is not valid UTF-8 [MQTT-1.5.3-1]") from None
    if "\x00" in text:
        raise ProtocolViolation("a string (topic, client id, user name) contains U+0000 [MQTT-1.5.3-2]")
    return text, at + n


def _binary(data: bytes, at: int, end: int) -> tuple[bytes, int]:
    if at + 2 > end:
        raise ProtocolViolation("binary length runs past the packet")
    n = _U16.unpack_from(data, at)[0]
    if at + 2 + n > end:
        raise ProtocolViolation("binary data runs past the packet")
    return data[at + 2 : at + 2 + n], at + 2 + n


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

    def frame(self) -> tuple[int, bytes] | None:
        """The first byte and the body of the next whole packet, undecoded; None until one is here."""
        buf = self._buf
        length, shift, i = 0, 0, 1
        while True:
            if i >= len(buf):
                return None
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolViolation("malformed remaining length [MQTT-2.2.3]")
        if length > self.max_packet:
            raise ProtocolViolation(f"a packet of {length} bytes is over the {self.max_packet}-byte limit")
        if i + length > len(buf):
            return None
        first, body = buf[0], bytes(buf[i : i + length])
        del buf[: i + length]
        return first, body

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
        packet_id, filters = _leading_packet_id(body, "SUBSCRIBE"), []
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
        packet_id, names = _leading_packet_id(body, "UNSUBSCRIBE"), []
        at = 2
        while at < len(body):
            name, at = _string(body, at, len(body))
            names.append(name)
        if not names:
            raise ProtocolViolation("UNSUBSCRIBE without a filter [MQTT-3.10.3-2]")
        return Unsubscribe(packet_id, names)
    if kind in (PINGREQ, DISCONNECT, CONNECT):
        if body and kind != CONNECT:
            raise ProtocolViolation(f"packet type {kind} with a body of {len(body)} bytes [MQTT-3.12.1, 3.14.1]")
        return Simple(kind)
    raise ProtocolViolation(f"a client may not send packet type {kind}")


def _leading_packet_id(body: bytes, name: str) -> int:
    """The packet id a SUBSCRIBE or UNSUBSCRIBE starts with; 0 when the body is too short to hold one
    (it holds no filter either, which the caller refuses) [MQTT-2.3.1-1]."""
    if len(body) < 2:
        return 0
    packet_id: int = _U16.unpack_from(body)[0]
    if packet_id == 0:
        raise ProtocolViolation(f"{name} with packet id 0 [MQTT-2.3.1-1]")
    return packet_id


def _decode_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise ProtocolViolation("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
    if qos == 0 and flags & 8:
        raise ProtocolViolation("PUBLISH with QoS 0 and DUP set [MQTT-3.3.1-2]")
    topic, at = _string(body, 0, len(body))
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolViolation(f"PUBLISH to {topic!r}: a topic name is non-empty, no wildcards [MQTT-3.3.2-2]")
    packet_id = None
    if qos:
        if at + 2 > len(body):
            raise ProtocolViolation("PUBLISH QoS > 0 without a packet id")
        packet_id = _U16.unpack_from(body, at)[0]
        if packet_id == 0:
            raise ProtocolViolation("PUBLISH with packet id 0 [MQTT-2.3.1-1]")
        at += 2
    return Publish(topic, body[at:], qos, bool(flags & 1), bool(flags & 8), packet_id)


def decode_connect(body: bytes) -> Connect:
    """The body of a CONNECT packet (its fixed header already read) [MQTT-3.1]."""
    end = len(body)
    name, at = _string(body, 0, end)
    if at + 4 > end:
        raise ProtocolViolation("CONNECT cut short in its variable header")
    level, flags, keep_alive = body[at], body[at + 1], _U16.unpack_from(body, at + 2)[0]
    at += 4
    if name != "MQTT" or level != 4:
        if name in ("MQTT", "MQIsdp"):
            raise UnacceptableProtocol(f"protocol {name} level {level}: only MQTT 3.1.1 (level 4) is served")
        raise ProtocolViolation(f"CONNECT with protocol name {name!r} [MQTT-3.1.2-1]")
    if flags & 0x01:
        raise ProtocolViolation("CONNECT with the reserved flag set [MQTT-3.1.2-3]")
    will_flag, will_qos, will_retain = flags & 0x04, (flags >> 3) & 3, bool(flags & 0x20)
    if not will_flag and (will_qos or will_retain):
        raise ProtocolViolation("Will QoS or retain without a Will [MQTT-3.1.2-13, 3.1.2-15]")
    if will_qos == 3:
        raise ProtocolViolation("Will QoS 3 [MQTT-3.1.2-14]")
    if flags & 0x40 and not flags & 0x80:
        raise ProtocolViolation("a password without a user name [MQTT-3.1.2-22]")
    client_id, at = _string(body, at, end)
    will = username = password = None
    if will_flag:
        topic, at = _string(body, at, end)
        if not topic or "+" in topic or "#" in topic:
            raise ProtocolViolation(f"Will topic {topic!r}: a topic name is non-empty, no wildcards [MQTT-3.3.2-2]")
        payload, at = _binary(body, at, end)
        will = Will(topic, payload, will_qos, will_retain)
    if flags & 0x80:
        username, at = _string(body, at, end)
    if flags & 0x40:
        password, at = _binary(body, at, end)
    if at != end:
        raise ProtocolViolation(f"CONNECT carries {end - at} bytes its flags do not announce")
    return Connect(client_id, bool(flags & 0x02), keep_alive, will, username, password)


def encode_connack(session_present: bool, code: int) -> bytes:
    """[MQTT-3.2.2-4] session present is 0 whenever the return code is not 0."""
    return bytes((0x20, 2, 1 if session_present and code == ACCEPTED else 0, code))


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
