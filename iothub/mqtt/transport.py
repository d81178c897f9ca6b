"""The byte pipe a client connection runs over, and its two kinds: TCP (TLS included) and WebSocket.

The connection shell (:mod:`.connection`) sees only :class:`Transport`. Writes never block: bytes are
buffered and go out as the socket allows; :meth:`Transport.buffered` says how many have not gone yet,
which is what makes a connection *congested* (its session then queues instead of writing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)
READ_SIZE = 64 * 1024
_CLOSE_WAIT_S = 5.0


class Transport(Protocol):
    certificate_cn: str | None  # CN of the verified TLS client certificate, if one was presented

    async def read(self) -> bytes:
        """What has arrived (waiting for something); ``b""`` at EOF or when the connection failed."""

    def write(self, data: bytes) -> None:
        """Send ``data`` as soon as the socket allows; nothing once closing."""

    def buffered(self) -> int:
        """Bytes written but not sent yet."""

    async def drain(self) -> None:
        """Wait until the buffered bytes are down to the socket's low-water mark (or the connection ended)."""

    def close(self) -> None:
        """Start closing: what is buffered is sent first (idempotent)."""

    async def wait_closed(self) -> None:
        """Wait until closed; a peer that does not read is cut off after a few seconds."""


def certificate_cn(ssl_object: ssl.SSLObject | None) -> str | None:
    """The subject CN of a verified client certificate, if the client presented one."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for attribute in rdn:
            if attribute[0] == "commonName":
                return str(attribute[1])
    return None


class TcpTransport:
    """Over asyncio streams (a TCP or TLS listener)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self.certificate_cn = certificate_cn(writer.get_extra_info("ssl_object"))
        # the asyncio transport's own method, not a wrapper: it is asked about every message
        self.buffered = self._transport.get_write_buffer_size

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_SIZE)
        except OSError:  # reset, TLS failure: the connection is over either way
            return b""

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(OSError):
            await self._writer.drain()

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        try:
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await self._writer.wait_closed()
        except TimeoutError:
            self._transport.abort()
        except OSError:
            pass


class WebSocketTransport:
    """Over a WebSocket connection (MQTT over WebSocket: binary messages carrying MQTT bytes).

    Writes made while a send is under way are joined into the next message, so a burst of packets
    costs one WebSocket message, and :meth:`buffered` counts them with the socket's own buffer.
    """

    def __init__(self, websocket: ServerConnection) -> None:
        self._ws = websocket
        self._socket = websocket.transport
        self.certificate_cn = certificate_cn(self._socket.get_extra_info("ssl_object"))
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._sender: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closer: asyncio.Task[None] | None = None

    async def read(self) -> bytes:
        try:
            message = await self._ws.recv()
        except ConnectionClosed:
            return b""
        if isinstance(message, str):  # [MQTT-6.0.0-1] MQTT travels in binary frames only
            log.info("closing an MQTT over WebSocket connection that sent a text frame [MQTT-6.0.0-1]")
            return b""
        return message

    def write(self, data: bytes) -> None:
        if self._closer is not None:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._sender is None:
            self._idle.clear()
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._pending:
                data = b"".join(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                await self._ws.send(data)  # waits only while the socket's buffer is over its high-water mark
        except ConnectionClosed:
            self._pending.clear()
            self._pending_bytes = 0
        finally:
            self._sender = None
            self._idle.set()

    def buffered(self) -> int:
        return self._pending_bytes + self._socket.get_write_buffer_size()

    async def drain(self) -> None:
        await self._idle.wait()

    def close(self) -> None:
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await self._idle.wait()  # what was written goes before the close frame
        await self._ws.close()  # the close handshake; websockets aborts the socket if it times out

    async def wait_closed(self) -> None:
        self.close()
        assert self._closer is not None
        await asyncio.shield(self._closer)
