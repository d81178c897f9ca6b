"""Transports: a WebSocket client that stops reading is congested like a TCP one (its messages queue,
the oldest drop) instead of piling up in the server's memory."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

from iothub.mqtt.policy import DisconnectReason, ServerOptions
from tests.mqtt.stubs import WAIT_S, mqtt_server
from tests.mqtt_raw import connect_packet, publish_packet, subscribe_packet


def ws_frame(data: bytes, opcode: int = 0x2) -> bytes:
    """One masked frame, binary unless told, as a client sends it (RFC 6455 5.2)."""
    mask = os.urandom(4)
    n = len(data)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def test_a_websocket_client_that_stops_reading_is_congested() -> None:
    async with mqtt_server(ServerOptions(max_queued=100), ws=True) as s:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", s.ports["mqtt_ws"]))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n".encode()
        )
        async with asyncio.timeout(WAIT_S):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.write(ws_frame(connect_packet("stuck")) + ws_frame(subscribe_packet(1, "flood/#", 0)))
        await s.hooks.wait_for(lambda c: c[0] == "subscribed")  # ... and from now on it never reads
        _, publisher = await asyncio.open_connection("127.0.0.1", s.port)
        publisher.write(connect_packet("flood"))
        burst = publish_packet("flood/a", b"x" * 1000) * 100
        async with asyncio.timeout(WAIT_S):
            for _ in range(400):  # bounded: 40 MB, far more than the kernel buffers on both sides
                if s.counters.counts["dropped stuck"]:
                    break
                publisher.write(burst)
                await publisher.drain()
        assert s.counters.counts["dropped stuck"] > 0  # it was congested: its queue filled and dropped
        assert s.server.stats().queued == 100
        assert s.server.connections["stuck"].congested
        publisher.close()
        writer.close()


async def test_a_websocket_text_frame_closes_the_connection() -> None:
    """[MQTT-6.0.0-1] MQTT goes in binary frames; a client sending text loses its connection."""
    async with mqtt_server(ws=True) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.ports["mqtt_ws"])
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n".encode()
        )
        async with asyncio.timeout(WAIT_S):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.write(ws_frame(connect_packet("texter")))
        assert await s.hooks.wait_for(lambda c: c[0] == "connect")
        writer.write(ws_frame(publish_packet("a", b""), opcode=0x1))  # a QoS 0 PUBLISH (valid UTF-8) as text
        assert await s.hooks.reason_for("texter") is DisconnectReason.DROPPED
        assert not [c for c in s.hooks.calls if c[0] == "publish"]
        writer.close()
