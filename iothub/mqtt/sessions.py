"""A client's session: its subscriptions and the messages on their way to it. Never awaits.

Outbound flow per session (MQTT 3.1.1 section 4.3):

* QoS 1/2 messages take a packet id and wait in ``inflight`` until PUBACK (QoS 1) or PUBREC then
  PUBCOMP (QoS 2). At most ``max_inflight`` are unacknowledged at a time; the rest wait in ``queue``.
* Nothing is dropped for a slow ack: an unacknowledged message stays in flight until the client
  acknowledges it, and is sent again with DUP=1 when the client reconnects to its persistent session
  [MQTT-4.4.0-1] (a PUBREL is resent for a QoS 2 message already received) .
* ``queue`` holds at most ``max_queued`` messages. **Policy: drop the oldest** (the newest reading
  is worth more than the oldest) and count it. While the client is offline, a persistent session
  (clean_session=0) queues QoS 1/2 messages only; QoS 0 is not kept for an absent client.
* QoS 0 goes straight out unless the connection is congested; then it queues like the rest.
* Inbound QoS 2: packet ids whose PUBLISH was routed but whose PUBREL has not come yet sit in
  ``awaiting_rel``; a resent PUBLISH with such an id is acknowledged, not routed again, so the message
  is delivered exactly once [MQTT-4.3.3-2].
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from iothub.mqtt.codec import PUBACK, PUBCOMP, PUBREC, PUBREL, encode_ack, encode_publish
from iothub.mqtt.topics import matches


class Message:
    """One routed application message, shared by all its receivers."""

    __slots__ = ("_qos0", "payload", "retain", "topic", "topic_bytes")

    def __init__(self, topic: str, payload: bytes, retain: bool = False, topic_bytes: bytes | None = None) -> None:
        self.topic = topic
        self.topic_bytes = topic.encode() if topic_bytes is None else topic_bytes
        self.payload = payload
        self.retain = retain
        self._qos0: bytes | None = None

    def qos0_packet(self) -> bytes:
        if self._qos0 is None:
            self._qos0 = encode_publish(self.topic_bytes, self.payload, 0, self.retain, None)
        return self._qos0


class Outgoing:
    __slots__ = ("message", "packet_id", "qos", "released")

    def __init__(self, message: Message, qos: int) -> None:
        self.message = message
        self.qos = qos
        self.packet_id = 0
        self.released = False  # QoS 2: PUBREC came, PUBREL sent, waiting for PUBCOMP


class Link(Protocol):
    """The live connection a session sends through."""

    def send(self, data: bytes) -> None: ...

    @property
    def congested(self) -> bool: ...


class Limits:
    def __init__(self, max_inflight: int, max_queued: int, on_drop: Callable[[str], None] | None = None) -> None:
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.on_drop = on_drop  # called with the client id of each dropped message


class Session:
    def __init__(self, client_id: str, clean: bool, limits: Limits) -> None:
        self.client_id = client_id
        self.clean = clean
        self.limits = limits
        self.subscriptions: dict[str, int] = {}
        self.inflight: dict[int, Outgoing] = {}  # insertion order = send order
        self.queue: deque[Outgoing] = deque()
        self.awaiting_rel: set[int] = set()
        self.link: Link | None = None
        self.dropped = 0
        self._next_id = 0

    # -- delivery ----------------------------------------------------------------------------------

    def subscribes(self, topic: str) -> bool:
        """Whether one of its subscriptions matches ``topic``."""
        return any(matches(topic_filter, topic) for topic_filter in self.subscriptions)

    def deliver(self, message: Message, qos: int) -> None:
        link = self.link
        if link is None:
            if qos and not self.clean:
                self._enqueue(Outgoing(message, qos))
            return
        if not qos and not self.queue and not link.congested:
            link.send(message.qos0_packet())
            return
        self._enqueue(Outgoing(message, qos))
        self.pump()

    def _enqueue(self, item: Outgoing) -> None:
        queue = self.queue
        if len(queue) >= self.limits.max_queued:
            queue.popleft()
            self.dropped += 1
            if self.limits.on_drop is not None:
                self.limits.on_drop(self.client_id)
        queue.append(item)

    def pump(self) -> None:
        """Send queued messages while the window and the connection allow."""
        link = self.link
        queue = self.queue
        if link is None or not queue:
            return
        window = self.limits.max_inflight
        inflight = self.inflight
        while queue and not link.congested:
            item = queue[0]
            if item.qos:
                if len(inflight) >= window:
                    return
                item.packet_id = self._packet_id()
                inflight[item.packet_id] = item
                message = item.message
                link.send(
                    encode_publish(message.topic_bytes, message.payload, item.qos, message.retain, item.packet_id)
                )
            else:
                link.send(item.message.qos0_packet())
            queue.popleft()

    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self.inflight:
                return self._next_id

    # -- acknowledgements from the client ----------------------------------------------------------

    def acknowledged(self, kind: int, packet_id: int) -> None:
        item = self.inflight.get(packet_id)
        if item is None:
            return  # unknown or already settled: nothing to do [MQTT-4.3.2-2 allows a late PUBACK]
        if kind == PUBACK and item.qos == 1:
            del self.inflight[packet_id]
        elif kind == PUBREC and item.qos == 2:
            item.released = True
            if self.link is not None:
                self.link.send(encode_ack(PUBREL, packet_id))
            return
        elif kind == PUBCOMP and item.qos == 2 and item.released:
            del self.inflight[packet_id]
        else:
            return
        self.pump()

    # -- connection changes ------------------------------------------------------------------------

    def attach(self, link: Link) -> None:
        """A connection took this session: resend what is unacknowledged [MQTT-4.4.0-1], then the queue."""
        self.link = link
        for packet_id, item in self.inflight.items():
            if item.released:
                link.send(encode_ack(PUBREL, packet_id))
            else:
                message = item.message
                link.send(
                    encode_publish(message.topic_bytes, message.payload, item.qos, message.retain, packet_id, True)
                )
        self.pump()

    def detach(self) -> None:
        self.link = None
        if self.clean:
            self.queue.clear()
            self.inflight.clear()
            return
        # QoS 0 waiting for a congested connection is not kept for an absent client
        if any(not item.qos for item in self.queue):
            self.queue = deque(item for item in self.queue if item.qos)

    # -- persistence -------------------------------------------------------------------------------

    @property
    def next_packet_id(self) -> int:
        return self._next_id

    def restore(self, next_packet_id: int, inflight: list[Outgoing], queued: list[Outgoing]) -> None:
        self._next_id = next_packet_id
        self.inflight = {item.packet_id: item for item in inflight}
        self.queue = deque(queued)
