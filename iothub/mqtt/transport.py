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
from collections.abc import Awaitable, Callable
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


class TcpTransport(asyncio.Protocol):
    """Over a TCP or TLS connection, as the asyncio protocol of the listening server's connections.

    No StreamReader/StreamWriter pair per connection: what arrives is kept as received until
    :meth:`read` takes it all at once, which is one callback per read and about 2 KB less per idle
    connection. Reading pauses while more than ``READ_SIZE`` bytes wait to be taken (a client
    held back by durable ack cannot make the server buffer without bound). ``accept`` runs, as a
    task of its own, for each connection made.
    """

    __slots__ = (
        "_accept", "_chunks", "_closed", "_drained", "_eof", "_paused", "_size", "_task", "_transport", "_waiter",
        "buffered", "certificate_cn",
    )  # fmt: skip

    def __init__(self, accept: Callable[[Transport], Awaitable[None]]) -> None:
        self._accept = accept
        self._transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.certificate_cn: str | None = None
        self.buffered: Callable[[], int] = lambda: 0

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        self.certificate_cn = certificate_cn(transport.get_extra_info("ssl_object"))
        # the asyncio transport's own method, not a wrapper: it is asked about every message
        self.buffered = transport.get_write_buffer_size  # type: ignore[attr-defined]
        self._task = loop.create_task(self._accept(self))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > READ_SIZE and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # plain TCP stays open to send what is buffered (the server closes it); TLS cannot half-close
        return self._transport is not None and self._transport.get_extra_info("ssl_object") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- Transport -----------------------------------------------------------------------------------

    async def read(self) -> bytes:
        if not self._chunks:
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            if not self._chunks:
                return b""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        if self._drained is not None and not self._drained.done():
            await self._drained

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        if self._closed is None:
            return
        try:
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await asyncio.shield(self._closed)
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()


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
