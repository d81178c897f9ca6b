"""Transports: a client that stops reading, over TCP or WebSocket, is congested (its messages queue,
the oldest drop) instead of piling up in the server's memory, and catches up once it reads again."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

from iothub.mqtt.policy import DisconnectReason, ServerOptions
from tests.mqtt.stubs import WAIT_S, RecordingHooks, mqtt_server
from tests.mqtt_raw import connect_packet, publish_packet, raw_connect, read_packet, subscribe_packet

CONNACK, SUBACK = 2, 9


def ws_frame(data: bytes, opcode: int = 0x2) -> bytes:
    """One masked frame, binary unless told, as a client sends it (RFC 6455 5.2)."""
    mask = os.urandom(4)
    n = len(data)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def ws_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Upgrade a raw connection to WebSocket with the ``mqtt`` subprotocol (RFC 6455 4.1)."""
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n".encode()
    )
    async with asyncio.timeout(WAIT_S):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")


async def test_a_websocket_client_that_stops_reading_is_congested() -> None:
    async with mqtt_server(ServerOptions(max_queued=100), ws=True) as s:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", s.ports["mqtt_ws"]))
        reader, writer = await asyncio.open_connection(sock=sock)
        await ws_handshake(reader, writer)
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
        await ws_handshake(reader, writer)
        writer.write(ws_frame(connect_packet("texter")))
        assert await s.hooks.wait_for(lambda c: c[0] == "connect")
        writer.write(ws_frame(publish_packet("a", b""), opcode=0x1))  # a QoS 0 PUBLISH (valid UTF-8) as text
        assert await s.hooks.reason_for("texter") is DisconnectReason.DROPPED
        assert not [c for c in s.hooks.calls if c[0] == "publish"]
        writer.close()


async def test_a_tcp_client_that_stops_reading_is_queued_for_and_catches_up_in_order() -> None:
    """Congestion on TCP: the session queues instead of writing, others are served meanwhile, and once
    the client reads again it gets every message, in publish order (the queue is big enough: no drop)."""
    async with mqtt_server(ServerOptions(max_queued=10_000)) as s:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", s.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(connect_packet("stuck") + subscribe_packet(1, "flood/#", 0))
        await s.hooks.wait_for(lambda c: c == ("subscribed", "stuck", "flood/#"))  # from now on it reads nothing
        by_reader, bystander, _ = await raw_connect(s.port, "bystander")
        bystander.write(subscribe_packet(1, "other/#", 0))
        assert (await read_packet(by_reader)).kind == SUBACK
        _, publisher = await asyncio.open_connection("127.0.0.1", s.port)
        publisher.write(connect_packet("flood"))
        sent = 0
        async with asyncio.timeout(WAIT_S):
            while s.server.stats().queued == 0 and sent < 4000:  # bounded: 40 MB, far beyond the kernel buffers
                publisher.write(b"".join(publish_packet("flood/a", numbered(n)) for n in range(sent, sent + 100)))
                sent += 100
                await publisher.drain()
        assert s.server.stats().queued > 0, f"{sent * 10} kB written to a client that reads nothing, none queued"
        assert s.server.connections["stuck"].congested
        publisher.write(publish_packet("other/ping", b"still served"))  # the server serves the others meanwhile
        served = await read_packet(by_reader)
        assert (served.topic, served.payload) == ("other/ping", b"still served")
        publisher.write(publish_packet("flood/end", b""))
        assert (await read_packet(reader)).kind == CONNACK
        assert (await read_packet(reader)).kind == SUBACK
        got = []
        async with asyncio.timeout(WAIT_S):
            while (message := await read_packet(reader)).topic != "flood/end":  # the client reads again
                got.append(int(message.payload[:8]))
        assert got == list(range(sent))  # all of them, in order
        assert s.server.stats().queued == 0
        assert not s.counters.counts["dropped stuck"]
        for w in (writer, bystander, publisher):
            w.close()


def numbered(n: int) -> bytes:
    """A 10 kB payload that starts with its number."""
    return f"{n:08d}".encode().ljust(10_000, b".")


async def test_a_tcp_client_held_back_by_durable_ack_is_no_longer_read_from() -> None:
    """Past ``max_unacked`` the connection stops reading; the transport then pauses the socket, so
    what the client goes on sending waits in the kernel and in the client, not in the server."""
    async with mqtt_server(ServerOptions(max_unacked=10), hooks=RecordingHooks(tickets=True)) as s:
        _, writer, _ = await raw_connect(s.port, "flood")
        burst = publish_packet("t/x", b"x" * 1000, qos=1, packet_id=1) * 100
        held_back = False
        for _ in range(400):  # bounded: 40 MB, far more than the kernel buffers on both sides
            writer.write(burst)
            try:
                async with asyncio.timeout(1.0):
                    await writer.drain()
            except TimeoutError:
                held_back = True  # the server no longer takes what the client sends
                break
        assert held_back
        assert len([c for c in s.hooks.calls if c[0] == "publish"]) < 40_000
        writer.transport.abort()
