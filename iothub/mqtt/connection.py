"""One client connection after its CONNACK: the asyncio shell around the codec and the session.

Reading: whatever the socket has is decoded in one go and each packet handled synchronously, with no
task per packet. Writing: packets produced during one turn of the event loop go out in one write.

* Keepalive [MQTT-3.1.2-24]: one timer per connection; a client silent for 1.5x its keepalive is
  closed (and its Will published by the server).
* Acknowledgements of the client's QoS 1/2 publishes leave in the order the publishes came
  [MQTT-4.6.0-2]. With durable ack, the acknowledgement of a message the hub stores waits until the
  store has committed it; while more than ``max_unacked`` wait, the connection reads no further (the
  client is held back instead of the hub buffering without bound).
* A connection whose socket cannot keep up is *congested* (more than ``HIGH_WATER`` bytes unsent);
  its session then queues instead of writing, and resumes once the socket drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter, WebSocketsReader
from websockets import ConnectionClosed

from iothub.hub.presence import PresenceReason
from iothub.mqtt.codec import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP_BYTES,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    Ack,
    PacketReader,
    ProtocolViolation,
    Publish,
    Simple,
    Subscribe,
    Unsubscribe,
    encode_ack,
)
from iothub.mqtt.sessions import Session

if TYPE_CHECKING:
    from iothub.mqtt.server import ClientInfo, MqttServer

log = logging.getLogger(__name__)
HIGH_WATER = 256 * 1024
READ_SIZE = 64 * 1024


class Connection:
    def __init__(self, server: MqttServer, session: Session, info: ClientInfo, reader: Any, writer: Any) -> None:
        self.server = server
        self.session = session
        self.info = info
        self.client_id = info.client_id
        self.closing: PresenceReason | None = None  # set when the hub closes the connection, with why
        self.protocol_error: str | None = None
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.WriteTransport | None = None
        if isinstance(writer, StreamWriterAdapter):
            self._transport = writer._writer.transport
        self._packets = PacketReader(server.settings.max_packet_bytes)
        self._out: list[bytes] = []
        self._flush_pending = False
        self._draining: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._acks: deque[tuple[int, bytes]] = deque()  # (store ticket or 0 when ready, ack packet)
        self._acks_released = asyncio.Event()  # clear while the hub holds this client back
        self._acks_released.set()
        self._last_read = self._loop.time()
        self._keepalive: asyncio.TimerHandle | None = None
        self._keepalive_s = info.keep_alive * 1.5

    # -- writing -----------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    @property
    def congested(self) -> bool:
        transport = self._transport
        return transport is not None and transport.get_write_buffer_size() > HIGH_WATER

    def _flush(self) -> None:
        self._flush_pending = False
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        if self._transport is not None:
            if self._transport.is_closing():
                return
            self._transport.write(data)
            if self.congested and self._draining is None:
                self._draining = self._loop.create_task(self._drain())
            return
        self._writer.write(data)  # WebSocket: its adapter sends on drain
        if self._draining is None:
            self._draining = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            with contextlib.suppress(ConnectionError, ConnectionClosed):
                await self._writer.drain()
        finally:
            self._draining = None
        if self.session.link is self:
            self.session.pump()

    def close(self, reason: PresenceReason | None = None) -> None:
        """End the connection from the hub's side (idempotent); ``serve`` then returns ``reason``."""
        if reason is not None and self.closing is None:
            self.closing = reason
        self._acks_released.set()  # a serve held back by the store ends too
        if self._transport is not None:
            self._flush()
            self._transport.close()
        elif self._closer is None:  # WebSocket: its close handshake is a coroutine
            self._closer = self._loop.create_task(self._writer.close())

    # -- reading -----------------------------------------------------------------------------------

    async def _read(self) -> bytes:
        reader = self._reader
        try:
            if isinstance(reader, StreamReaderAdapter):
                data: bytes = await reader._reader.read(READ_SIZE)
                return data
            if isinstance(reader, WebSocketsReader):
                buffered: bytes = reader._stream.read()
                if buffered:
                    return buffered
                message = await reader._protocol.recv()
                return message.encode() if isinstance(message, str) else bytes(message)
            other: bytes = await reader.read(READ_SIZE)  # pragma: no cover - the listeners above are all we run
            return other
        except (ConnectionError, ConnectionClosed):
            return b""

    def _check_keepalive(self) -> None:
        now = self._loop.time()
        if not self._acks_released.is_set():
            self._last_read = now  # the hub stopped reading, not the client: its silence is ours
        if now - self._last_read >= self._keepalive_s:
            self.close(PresenceReason.KEEPALIVE_TIMEOUT)
            return
        self._keepalive = self._loop.call_at(self._last_read + self._keepalive_s, self._check_keepalive)

    async def serve(self) -> bool:
        """Serve until the connection ends; True when it ended with a DISCONNECT packet."""
        if self._keepalive_s > 0:
            self._keepalive = self._loop.call_later(self._keepalive_s, self._check_keepalive)
        try:
            while True:
                data = await self._read()
                if not data:
                    return False
                self._last_read = self._loop.time()
                self._packets.feed(data)
                for packet in self._packets.packets():
                    if type(packet) is Publish:
                        self._publish(packet)
                    elif type(packet) is Ack:
                        self._ack(packet)
                    elif type(packet) is Subscribe:
                        await self.server.subscribe(self, packet)
                    elif type(packet) is Unsubscribe:
                        self.server.unsubscribe(self, packet)
                    elif type(packet) is Simple:
                        if packet.kind == PINGREQ:
                            self.send(PINGRESP_BYTES)
                        elif packet.kind == DISCONNECT:
                            return True
                        elif packet.kind == CONNECT:
                            raise ProtocolViolation("a second CONNECT [MQTT-3.1.0-2]")
                    if self.closing is not None:
                        return False
                while len(self._acks) > self.server.settings.max_unacked and self.closing is None:
                    self._acks_released.clear()  # the store is behind: read no more from this client
                    await self._acks_released.wait()  # set by release_acks or close
                if self.closing is not None:
                    return False
        except ProtocolViolation as exc:
            self.protocol_error = str(exc)
            log.warning("closing MQTT client %r: %s", self.client_id, exc)
            self.server.protocol_errors.inc()
            return False
        finally:
            if self._keepalive is not None:
                self._keepalive.cancel()
            self._flush()

    # -- packets -----------------------------------------------------------------------------------

    def _publish(self, packet: Publish) -> None:
        qos = packet.qos
        if qos == 2 and packet.packet_id in self.session.awaiting_rel:
            self._acknowledge(PUBREC, packet.packet_id, None)  # a resend: routed already [MQTT-4.3.3-2]
            return
        ticket = self.server.publish(self, packet)
        if qos == 1:
            self._acknowledge(PUBACK, packet.packet_id, ticket)  # type: ignore[arg-type]
        elif qos == 2:
            self.session.awaiting_rel.add(packet.packet_id)  # type: ignore[arg-type]
            self._acknowledge(PUBREC, packet.packet_id, ticket)  # type: ignore[arg-type]

    def _acknowledge(self, kind: int, packet_id: int, ticket: int | None) -> None:
        ack = encode_ack(kind, packet_id)
        if ticket is None:
            if not self._acks:
                self.send(ack)
                return
            ticket = 0
        elif not self._acks:
            self.server.holding(self)
        self._acks.append((ticket, ack))

    def release_acks(self, committed: int) -> bool:
        """Send the acknowledgements whose messages are committed; True while some still wait."""
        acks = self._acks
        while acks and acks[0][0] <= committed:
            self.send(acks.popleft()[1])
        if len(acks) <= self.server.settings.max_unacked:
            self._acks_released.set()
        return bool(acks)

    def _ack(self, packet: Ack) -> None:
        if packet.kind == PUBREL:
            self.session.awaiting_rel.discard(packet.packet_id)
            self._acknowledge(PUBCOMP, packet.packet_id, None)
        else:
            self.session.acknowledged(packet.kind, packet.packet_id)
