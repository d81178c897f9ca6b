"""One client connection: the asyncio shell around the codec and the session, over a :class:`~.transport.Transport`.

Reading: whatever the transport has is decoded in one go and each packet handled synchronously, with
no task per packet. Writing: packets produced during one turn of the event loop go out in one write.

* Keepalive [MQTT-3.1.2-24]: one timer per connection; a client silent for 1.5x its keepalive is
  closed (and its Will published by the server).
* Acknowledgements of the client's QoS 1/2 publishes leave in the order the publishes came
  [MQTT-4.6.0-2]. With durable ack, the acknowledgement of a message the application stores waits
  until it is committed; while more than ``max_unacked`` wait, the connection reads no further (the
  client is held back instead of the server buffering without bound).
* A connection whose transport cannot keep up is *congested* (more than ``HIGH_WATER`` bytes unsent);
  its session then queues instead of writing, and resumes once the transport drains.

The connection calls back into its :class:`ConnectionOwner` (the server) for what concerns more than
itself: routing a publish, granting subscriptions, holding acknowledgements.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, Protocol, TypeVar

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
    Connect,
    PacketReader,
    ProtocolViolation,
    Publish,
    Simple,
    Subscribe,
    Unsubscribe,
    Will,
    decode_connect,
    encode_ack,
)
from iothub.mqtt.policy import DisconnectReason
from iothub.mqtt.sessions import Session
from iothub.mqtt.transport import Transport

HIGH_WATER = 256 * 1024
P = TypeVar("P")


class ConnectionOwner(Protocol[P]):
    """What a connection asks of the server it belongs to."""

    def publish(self, conn: Connection[P], packet: Publish) -> int | None:
        """Check and route a client's PUBLISH; a ticket when its acknowledgement must wait for it."""

    async def subscribe(self, conn: Connection[P], packet: Subscribe) -> None: ...

    def unsubscribe(self, conn: Connection[P], packet: Unsubscribe) -> None: ...

    def holding(self, conn: Connection[P]) -> None:
        """``conn`` has acknowledgements waiting for a ticket to be committed."""

    def protocol_error(self, conn: Connection[P], problem: str) -> None:
        """``conn`` broke the protocol and is being closed; ``problem`` says how."""


async def read_connect(transport: Transport, packets: PacketReader) -> Connect | None:
    """Read the first packet, which must be a CONNECT [MQTT-3.1.0-1]; None if the connection ends first.

    What the client sent after its CONNECT stays in ``packets`` for the connection to handle.
    """
    while (frame := packets.frame()) is None:
        data = await transport.read()
        if not data:
            return None
        packets.feed(data)
    first, body = frame
    if first != CONNECT << 4:
        raise ProtocolViolation(f"the first packet is of type {first >> 4}, not CONNECT [MQTT-3.1.0-1]")
    return decode_connect(body)


class Connection(Generic[P]):
    def __init__(
        self,
        owner: ConnectionOwner[P],
        session: Session,
        transport: Transport,
        packets: PacketReader,
        connect: Connect,
        principal: P,
        max_unacked: int,
    ) -> None:
        self.owner = owner
        self.session = session
        self.client_id = session.client_id
        self.principal = principal
        self.will: Will | None = connect.will
        self.closing: DisconnectReason | None = None  # set when the server closes the connection, with why
        self.protocol_error: str | None = None
        self._transport = transport
        self._buffered = transport.buffered
        self._loop = asyncio.get_running_loop()
        self._packets = packets
        self._max_unacked = max_unacked
        self._out: list[bytes] = []
        self._flush_pending = False
        self._draining: asyncio.Task[None] | None = None
        self._acks: deque[tuple[int, bytes]] = deque()  # (store ticket or 0 when ready, ack packet)
        self._acks_released = asyncio.Event()  # clear while the application holds this client back
        self._acks_released.set()
        self._last_read = self._loop.time()
        self._keepalive: asyncio.TimerHandle | None = None
        self._keepalive_s = connect.keep_alive * 1.5
        self._serving: asyncio.Task[bool] | None = None
        self._reading = False  # serve is waiting for the transport: close() may cut that wait short

    # -- writing -----------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    @property
    def congested(self) -> bool:
        return self._buffered() > HIGH_WATER

    def _flush(self) -> None:
        self._flush_pending = False
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._transport.write(data)
        if self._draining is None and self._buffered() > HIGH_WATER:
            self._draining = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self._transport.drain()
        finally:
            self._draining = None
        if self.session.link is self:
            self.session.pump()

    def close(self, reason: DisconnectReason | None = None) -> None:
        """End the connection from the server's side (idempotent); ``serve`` returns at once.

        A client that stopped reading may keep its socket from closing while unsent bytes wait: the
        session ends now all the same (presence, Will), and the transport cuts the socket off after a
        bounded wait (:meth:`~.transport.Transport.wait_closed`).
        """
        if reason is not None and self.closing is None:
            self.closing = reason
        self._acks_released.set()  # a serve held back by durable ack ends too
        self._flush()
        self._transport.close()
        if self._reading and self._serving is not None and self.closing is not None:
            self._serving.cancel()  # only the wait for more input: caught in serve

    # -- reading -----------------------------------------------------------------------------------

    def _check_keepalive(self) -> None:
        now = self._loop.time()
        if not self._acks_released.is_set():
            self._last_read = now  # the server stopped reading, not the client: its silence is ours
        if now - self._last_read >= self._keepalive_s:
            self.close(DisconnectReason.KEEPALIVE)
            return
        self._keepalive = self._loop.call_at(self._last_read + self._keepalive_s, self._check_keepalive)

    async def serve(self) -> bool:
        """Serve until the connection ends; True when it ended with a DISCONNECT packet."""
        if self._keepalive_s > 0:
            self._keepalive = self._loop.call_later(self._keepalive_s, self._check_keepalive)
        self._serving = asyncio.current_task()
        owner = self.owner
        transport = self._transport
        try:
            while True:
                for packet in self._packets.packets():
                    if type(packet) is Publish:
                        self._publish(packet)
                    elif type(packet) is Ack:
                        self._ack(packet)
                    elif type(packet) is Subscribe:
                        await owner.subscribe(self, packet)
                    elif type(packet) is Unsubscribe:
                        owner.unsubscribe(self, packet)
                    elif type(packet) is Simple:
                        if packet.kind == PINGREQ:
                            self.send(PINGRESP_BYTES)
                        elif packet.kind == DISCONNECT:
                            return True
                        elif packet.kind == CONNECT:
                            raise ProtocolViolation("a second CONNECT [MQTT-3.1.0-2]")
                    if self.closing is not None:
                        return False
                while len(self._acks) > self._max_unacked and self.closing is None:
                    self._acks_released.clear()  # the application is behind: read no more from this client
                    await self._acks_released.wait()  # set by release_acks or close
                if self.closing is not None:
                    return False
                self._reading = True
                try:
                    data = await transport.read()
                except asyncio.CancelledError:
                    if self.closing is None or self._serving is None:
                        raise
                    self._serving.uncancel()  # close() ended the wait: the connection is over
                    return False
                finally:
                    self._reading = False
                if not data:
                    return False
                self._last_read = self._loop.time()
                self._packets.feed(data)
        except ProtocolViolation as exc:
            self.protocol_error = str(exc)
            owner.protocol_error(self, str(exc))  # the owner counts it and logs it
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
        ticket = self.owner.publish(self, packet)
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
            self.owner.holding(self)
        self._acks.append((ticket, ack))

    def release_acks(self, committed: int) -> bool:
        """Send the acknowledgements whose messages are committed; True while some still wait."""
        acks = self._acks
        while acks and acks[0][0] <= committed:
            self.send(acks.popleft()[1])
        if len(acks) <= self._max_unacked:
            self._acks_released.set()
        return bool(acks)

    def _ack(self, packet: Ack) -> None:
        if packet.kind == PUBREL:
            self.session.awaiting_rel.discard(packet.packet_id)
            self._acknowledge(PUBCOMP, packet.packet_id, None)
        else:
            self.session.acknowledged(packet.kind, packet.packet_id)
