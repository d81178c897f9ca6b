"""A lean MQTT 3.1.1 device for load generators: one asyncio ``Protocol`` per connection, no streams.

Only what a telemetry device needs: CONNECT (anonymous or with username/password), QoS 0/1 PUBLISH
with the send time of each unacknowledged message kept for its PUBACK, and the CONNACK code. The
point is that thousands of these fit in one process with little CPU, so that a benchmark measures
the broker and not its load generator.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

_U16 = struct.Struct("!H")


def string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return _U16.pack(len(data)) + data


def packet(first: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


def connect_packet(
    client_id: str, username: str | None = None, password: str | None = None, keepalive: int = 600
) -> bytes:
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = string("MQTT") + bytes([4, flags]) + _U16.pack(keepalive) + string(client_id)
    if username is not None:
        body += string(username)
    if password is not None:
        body += string(password)
    return packet(0x10, body)


class Device(asyncio.Protocol):
    """One connection. ``latencies`` collects publish-to-PUBACK (ms) while ``timing`` is set."""

    def __init__(self, client_id: str, username: str | None = None, password: str | None = None) -> None:
        self.client_id = client_id
        self.username = username
        self.password = password
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.topic = string(f"devices/{client_id}/telemetry")
        self.seq = 0
        self.sent = 0
        self.acked = 0
        self.timing = False
        self.latencies: list[float] = []
        self._next_id = 0
        self._pending: dict[int, int] = {}  # packet id -> send time (ns), for timed messages
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        transport.write(  # type: ignore[attr-defined]
            connect_packet(self.client_id, self.username, self.password)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"{self.client_id}: closed before CONNACK"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        at, end = 0, len(buf)
        while end - at >= 2:
            first, length = buf[at], buf[at + 1]
            if length & 0x80:  # a long packet: nothing this device receives is one
                if self.transport is not None:
                    self.transport.close()
                return
            if end - at < 2 + length:
                break
            kind = first >> 4
            if kind == 4:  # PUBACK
                packet_id = (buf[at + 2] << 8) | buf[at + 3]
                self.acked += 1
                sent = self._pending.pop(packet_id, None)
                if sent is not None:
                    self.latencies.append((time.monotonic_ns() - sent) / 1e6)
            elif kind == 2 and not self.connack.done():
                self.connack.set_result(buf[at + 3])
            at += 2 + length
        self._buf = buf[at:]

    def publish(self, payload: bytes, qos: int = 1) -> None:
        transport = self.transport
        if transport is None:
            return
        self.sent += 1
        if qos == 0:
            transport.write(packet(0x30, self.topic + payload))
            return
        self._next_id = self._next_id % 65535 + 1
        if self.timing:
            self._pending[self._next_id] = time.monotonic_ns()
        transport.write(packet(0x32, self.topic + _U16.pack(self._next_id) + payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(
    host: str, port: int, client_id: str, username: str | None = None, password: str | None = None
) -> Device:
    """A connected device (CONNACK 0); raises ``ConnectionError`` with the CONNACK code otherwise."""
    loop = asyncio.get_running_loop()
    _, device = await loop.create_connection(lambda: Device(client_id, username, password), host, port)
    async with asyncio.timeout(30):
        code = await device.connack
    if code:
        device.close()
        raise ConnectionError(f"{client_id}: CONNACK {code}")
    return device


def runner() -> Any:
    """``uvloop.run`` when uvloop is installed, else ``asyncio.run``: the load generator's workers run
    on the loop the hub runs on."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run
