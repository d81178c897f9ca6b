"""A few MQTT 3.1.1 packets by hand, to check exactly what the broker answers (e.g. CONNACK codes)."""

from __future__ import annotations

import asyncio
import struct


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes] | None = None,
    keepalive: int = 30,
    clean: bool = True,
    will_qos: int = 1,
    protocol: str = "MQTT",
    level: int = 4,
) -> bytes:
    """A CONNECT; ``protocol="MQIsdp", level=3`` makes it an MQTT 3.1 one."""
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04 | (will_qos << 3)
        payload += _string(will[0]) + _string(will[1])
    if username is not None:
        payload += _string(username)
    if password is not None:
        payload += _string(password)
    variable = _string(protocol) + bytes([level, flags]) + struct.pack("!H", keepalive)
    body = variable + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


async def connack_code(port: int, client_id: str, **kwargs: object) -> int:
    """Send CONNECT and return the CONNACK return code (0 = accepted)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(connect_packet(client_id, **kwargs))  # type: ignore[arg-type]
        await writer.drain()
        async with asyncio.timeout(10):
            packet = await reader.readexactly(4)
        assert packet[0] == 0x20, f"expected CONNACK, got {packet!r}"
        return packet[3]
    finally:
        writer.close()
        await writer.wait_closed()


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + _remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return packet(8, 2, struct.pack("!H", packet_id) + _string(topic_filter) + bytes([qos]))


def publish_packet(
    topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, retain: bool = False, dup: bool = False
) -> bytes:
    flags = (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    return packet(3, flags, _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload)


def ack_packet(kind: int, packet_id: int) -> bytes:
    """PUBACK (4), PUBREC (5), PUBREL (6) or PUBCOMP (7)."""
    return packet(kind, 2 if kind == 6 else 0, struct.pack("!H", packet_id))


class Received:
    """One packet read back: its type, flags and body; PUBLISH fields decoded."""

    def __init__(self, first: int, body: bytes) -> None:
        self.kind, self.flags, self.body = first >> 4, first & 0x0F, body

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 3

    @property
    def dup(self) -> bool:
        return bool(self.flags & 8)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 1)

    @property
    def topic(self) -> str:
        n = struct.unpack_from("!H", self.body)[0]
        return self.body[2 : 2 + n].decode()

    @property
    def packet_id(self) -> int:
        if self.kind == 3:
            return int(struct.unpack_from("!H", self.body, 2 + len(self.topic.encode()))[0])
        return int(struct.unpack_from("!H", self.body)[0])

    @property
    def payload(self) -> bytes:
        at = 2 + len(self.topic.encode()) + (2 if self.qos else 0)
        return self.body[at:]


async def read_packet(reader: asyncio.StreamReader, within: float = 5.0) -> Received:
    async with asyncio.timeout(within):
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        return Received(first, await reader.readexactly(length))


async def raw_connect(
    port: int, client_id: str, **kwargs: object
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Received]:
    """Connect by hand; the CONNACK comes back too (``body[0]`` is session present, ``body[1]`` the code)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_packet(client_id, **kwargs))  # type: ignore[arg-type]
    await writer.drain()
    return reader, writer, await read_packet(reader)
