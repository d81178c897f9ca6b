"""The hub's MQTT 3.1.1 server core: sessions, routing, retained messages, Wills, durable ack.

amqtt 0.12.1 accepts connections and parses CONNECT (see :mod:`iothub.hub.embedded`); everything after
that is here, because amqtt's own session and delivery code breaks the rules named below:

* [MQTT-3.1.2-4..6] persistent sessions (clean_session=0) keep their subscriptions and queue QoS 1/2
  messages while the client is away; CONNACK says session_present=1 [MQTT-3.2.2-2]; clean_session=1
  discards any earlier session [MQTT-3.1.2-6];
* [MQTT-3.1.4-2] a CONNECT with the client id of a connected client closes the older connection,
  after the new one has authenticated;
* [MQTT-3.8.4-6] a message goes out at min(publish QoS, subscription QoS), Wills included;
* [MQTT-3.3.1-6, 3.3.1-9] retained messages go only to the new subscription that matches them, and
  routed copies carry retain=0 (queued messages too);
* [MQTT-4.4.0-1] unacknowledged QoS 1/2 messages are resent with DUP=1 on reconnect, never dropped
  on a timer; QoS 2 is delivered exactly once in both directions (see :mod:`.sessions`);
* [MQTT-4.7.2-1] a client's publish to a ``$`` topic is dropped, and the client served on;
* [MQTT-3.1.2-8] a Will is published when the connection ends without DISCONNECT, including when
  the server closes it (keepalive, protocol error, disabled device) but not on takeover.

Routing is synchronous through a :class:`~.routing.SubscriptionTrie`: no task and no log formatting
per message.

Durable ack (``mqtt.durable_ack``): the tap returns a *ticket* for a message it queued for the store;
the PUBACK/PUBREC for it waits until :meth:`MqttServer.committed` reports that ticket stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter

from iothub.hub.auth import Authenticator, Principal, PrincipalKind, Refusal
from iothub.hub.auth import may_publish as acl_publish
from iothub.hub.auth import may_subscribe as acl_subscribe
from iothub.hub.metrics import HubMetrics
from iothub.hub.presence import PresenceReason
from iothub.hub.settings import MqttSettings
from iothub.mqtt.codec import SUBACK_FAILURE, Publish, Subscribe, Unsubscribe, encode_suback, encode_unsuback
from iothub.mqtt.connection import Connection
from iothub.mqtt.routing import SubscriptionTrie
from iothub.mqtt.sessions import Limits, Message, Session
from iothub.mqtt.topics import matches

log = logging.getLogger(__name__)
_LOG_EVERY_S = 60.0
_CONNACK = struct.Struct("!BBBB")
SERVER_UNAVAILABLE = 0x03
_CLOSE_WAIT_S = 5.0


class BrokerTap(Protocol):
    def on_publish(self, client_id: str | None, topic: str, payload: bytes) -> int | None:
        """Take a routed message; return a ticket when it is queued for the store (durable ack)."""

    def on_connect(self, client_id: str) -> None: ...

    def on_disconnect(self, client_id: str, reason: PresenceReason) -> None: ...


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What a CONNECT said, and who the client proved to be."""

    client_id: str
    clean: bool
    keep_alive: int
    principal: Principal
    will: Will | None


def connack(session_present: bool, code: int) -> bytes:
    return _CONNACK.pack(0x20, 2, 1 if session_present and code == 0 else 0, code)


def valid_filter(topic_filter: str) -> bool:
    """[MQTT-4.7.1-2, 4.7.1-3] ``#`` only as the whole last level, ``+`` only as a whole level."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            return False
    return True


class MqttServer:
    def __init__(self, settings: MqttSettings, tap: BrokerTap, auth: Authenticator, metrics: HubMetrics) -> None:
        self.settings = settings
        self.tap = tap
        self.auth = auth
        self.trie = SubscriptionTrie()
        self.sessions: dict[str, Session] = {}
        self.connections: dict[str, Connection] = {}
        self.retained: dict[str, tuple[bytes, int]] = {}
        self.subscribed_listeners: list[Any] = []  # async (client id, filter) -> None, after SUBACK
        self.dirty = False  # sessions or retained messages changed since the last checkpoint
        self._holding: set[Connection] = set()  # connections with acknowledgements waiting for the store
        self._stopping = False
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        dropped = metrics.mqtt_dropped.labels("queue_full")
        self.limits = Limits(settings.max_inflight, settings.max_queued, lambda _cid: dropped.inc())
        self.protocol_errors: Counter = metrics.mqtt_protocol_errors
        self._acl_denied = {a: metrics.acl_denied.labels(a) for a in ("publish", "subscribe")}
        self._acl_logged: dict[str, float] = {}
        self._auth_results = {r: metrics.mqtt_auth.labels(r) for r in ("ok", "0x02", "0x03", "0x04", "0x05")}
        metrics.gauge_callback(
            "iothub_mqtt_sessions", "MQTT sessions, by whether a client is connected", ("online",), self._session_gauge
        )
        metrics.gauge_callback(
            "iothub_mqtt_queued",
            "Messages waiting for MQTT clients, queued or in flight",
            ("state",),
            self._queue_gauge,
        )

    def _session_gauge(self) -> list[tuple[tuple[str, ...], float]]:
        online = len(self.connections)
        return [(("true",), online), (("false",), len(self.sessions) - online)]

    def _queue_gauge(self) -> list[tuple[tuple[str, ...], float]]:
        queued = sum(len(s.queue) for s in self.sessions.values())
        inflight = sum(len(s.inflight) for s in self.sessions.values())
        return [(("queued",), queued), (("inflight",), inflight)]

    # -- connections -------------------------------------------------------------------------------

    async def serve_client(
        self, client_id: str, clean: bool, keep_alive: int, credentials: dict[str, Any], reader: Any, writer: Any
    ) -> None:
        """Authenticate a CONNECT, answer CONNACK, serve the client until it goes, then clean up."""
        if self._stopping:
            writer.write(connack(False, SERVER_UNAVAILABLE))
            return
        will: Will | None = credentials.pop("will")
        result = await self.auth.authenticate(
            client_id=client_id, will_topic=will.topic if will else None, **credentials
        )
        if isinstance(result, Refusal):
            self._auth_results[f"0x{result.code:02x}"].inc()
            log.warning("refused MQTT client %r (CONNACK 0x%02x): %s", client_id, result.code, result.reason)
            writer.write(connack(False, result.code))
            return
        self._auth_results["ok"].inc()
        info = ClientInfo(client_id, clean, keep_alive, result, will)
        previous = self.connections.get(client_id)
        if previous is not None:  # [MQTT-3.1.4-2] the new connection takes over
            self._end(previous, PresenceReason.TAKEN_OVER)
        session = self.sessions.get(client_id)
        present = session is not None and not clean and not session.clean
        if session is not None and not present:
            self._discard(session)
            session = None
        if session is None:
            session = self.sessions[client_id] = Session(client_id, clean, self.limits)
            self.dirty = self.dirty or not clean
        conn = Connection(self, session, info, reader, writer)
        self.connections[client_id] = conn
        self._all_closed.clear()
        conn.send(connack(present, 0))
        session.attach(conn)
        self.tap.on_connect(client_id)
        disconnected = False
        try:
            disconnected = await conn.serve()
        finally:
            self._finish(conn, disconnected)

    def _end(self, conn: Connection, reason: PresenceReason) -> None:
        """Detach ``conn`` from its session now and close it; its Will is not sent."""
        self.tap.on_disconnect(conn.client_id, reason)
        self._release(conn)
        conn.session.detach()
        conn.close(reason)

    def _release(self, conn: Connection) -> None:
        if self.connections.get(conn.client_id) is conn:
            del self.connections[conn.client_id]
            if not self.connections:
                self._all_closed.set()
        self._holding.discard(conn)

    def _finish(self, conn: Connection, disconnected: bool) -> None:
        if conn.closing is PresenceReason.TAKEN_OVER:
            return  # reported and detached when it was taken over
        self._release(conn)
        session = conn.session
        if session.link is conn:
            session.detach()
        if session.clean and self.sessions.get(conn.client_id) is session:
            self._discard(session)
        if conn.closing is not None:
            reason = conn.closing
        elif disconnected:
            reason = PresenceReason.CLEAN_DISCONNECT
        elif conn.info.will is not None:
            reason = PresenceReason.LAST_WILL
        else:
            reason = PresenceReason.CONNECTION_LOST
        self.tap.on_disconnect(conn.client_id, reason)
        will = conn.info.will
        if will is not None and not disconnected and reason is not PresenceReason.HUB_STOPPED:
            self.route(conn.client_id, will.topic, will.payload, will.qos, will.retain)
        conn.close()

    def _discard(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self.trie.remove(topic_filter, session.client_id)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        if not session.clean:
            self.dirty = True

    def disconnect(self, client_id: str, reason: PresenceReason) -> bool:
        conn = self.connections.get(client_id)
        if conn is None:
            return False
        conn.close(reason)
        return True

    async def close(self) -> None:
        """Refuse new clients, close every connection and wait (bounded) for them to finish."""
        self._stopping = True
        for conn in list(self.connections.values()):
            conn.close(PresenceReason.HUB_STOPPED)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await self._all_closed.wait()

    def connected(self, kind: PrincipalKind) -> list[str]:
        return [cid for cid, conn in self.connections.items() if conn.info.principal.kind is kind]

    # -- publishing --------------------------------------------------------------------------------

    def publish(self, conn: Connection, packet: Publish) -> int | None:
        """A client's PUBLISH: check, hand to the tap, route; the tap's ticket (if any) for its ack."""
        topic = packet.topic
        if topic[0] == "$":  # [MQTT-4.7.2-1]
            self._acl_denied["publish"].inc()
            return None
        if not acl_publish(conn.info.principal, topic):
            self._denied(conn, "publish", topic)
            return None
        ticket = self.tap.on_publish(conn.client_id, topic, packet.payload)
        self._deliver(topic, packet.payload, packet.qos, packet.retain)
        return ticket if self.settings.durable_ack else None

    def route(self, sender: str | None, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        """A message from the hub itself (``sender`` None) or a Will: to the tap, then to subscribers."""
        self.tap.on_publish(sender, topic, payload)
        self._deliver(topic, payload, qos, retain)

    def _deliver(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Deliver to every matching subscription at min(publish, subscription) QoS [MQTT-3.8.4-6]."""
        if retain:
            self._retain(topic, payload, qos)
        targets = self.trie.match(topic)
        if not targets:
            return
        message = Message(topic, payload)
        sessions = self.sessions
        for client_id, sub_qos in targets.items():
            session = sessions.get(client_id)
            if session is not None:
                session.deliver(message, sub_qos if sub_qos < qos else qos)

    def _retain(self, topic: str, payload: bytes, qos: int) -> None:
        if payload:
            self.retained[topic] = (payload, qos)
        else:
            self.retained.pop(topic, None)  # [MQTT-3.3.1-10] an empty retained message clears it
        self.dirty = True

    def _denied(self, conn: Connection, action: str, topic: str) -> None:
        self._acl_denied[action].inc()
        principal = conn.info.principal
        now = time.monotonic()
        if now - self._acl_logged.get(principal.name, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._acl_logged[principal.name] = now
            log.warning("%s %r may not %s %r (logged once a minute)", principal.kind, principal.name, action, topic)
        if action == "publish" and self.settings.acl_violation == "disconnect":
            conn.close(PresenceReason.ACL_VIOLATION)

    # -- durable ack -------------------------------------------------------------------------------

    def holding(self, conn: Connection) -> None:
        self._holding.add(conn)

    def committed(self, ticket: int) -> None:
        """The store committed every message up to ``ticket``: release their acknowledgements."""
        if self._holding:
            self._holding = {conn for conn in self._holding if conn.release_acks(ticket)}

    # -- subscriptions -----------------------------------------------------------------------------

    async def subscribe(self, conn: Connection, packet: Subscribe) -> None:
        session = conn.session
        codes: list[int] = []
        granted: list[tuple[str, int]] = []
        for topic_filter, qos in packet.filters:
            if not valid_filter(topic_filter):
                codes.append(SUBACK_FAILURE)
                continue
            if not acl_subscribe(conn.info.principal, topic_filter):
                self._denied(conn, "subscribe", topic_filter)
                codes.append(SUBACK_FAILURE)
                continue
            session.subscriptions[topic_filter] = qos
            self.trie.add(topic_filter, conn.client_id, qos)
            codes.append(qos)
            granted.append((topic_filter, qos))
        if not session.clean:
            self.dirty = True
        conn.send(encode_suback(packet.packet_id, codes))
        for topic_filter, qos in granted:  # [MQTT-3.3.1-6] retained messages for this subscription only
            for topic, (payload, retained_qos) in self.retained.items():
                if matches(topic_filter, topic):
                    session.deliver(Message(topic, payload, retain=True), min(qos, retained_qos))
        for topic_filter, _ in granted:
            for listener in self.subscribed_listeners:
                await listener(conn.client_id, topic_filter)

    def unsubscribe(self, conn: Connection, packet: Unsubscribe) -> None:
        session = conn.session
        for topic_filter in packet.filters:
            if session.subscriptions.pop(topic_filter, None) is not None:
                self.trie.remove(topic_filter, conn.client_id)
        if not session.clean:
            self.dirty = True
        conn.send(encode_unsuback(packet.packet_id))
