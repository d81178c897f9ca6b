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
) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04 | 0x08  # will flag, will QoS 1
        payload += _string(will[0]) + _string(will[1])
    if username is not None:
        payload += _string(username)
    if password is not None:
        payload += _string(password)
    variable = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
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
