"""The MQTT 3.1.1 server: CONNECT to close, sessions, routing, retained messages, Wills, durable ack.

:meth:`MqttServer.serve` takes one accepted connection (a :class:`~.transport.Transport`, from the
listeners in :mod:`.amqtt_listeners`) and serves it to the end. Policy comes from the application
through the protocols of :mod:`.policy`. The rules it keeps that plain amqtt 0.12.1 breaks, each
covered by a test that fails on plain amqtt:

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
  the server closes it (keepalive, protocol error, the application's disconnect) but not on takeover;
* a client over ``max_connections`` is refused at once with CONNACK 0x03 (amqtt leaves it waiting).

Only MQTT 3.1.1 is served: a CONNECT of another version (3.1 sends ``MQIsdp`` level 3) is answered
with CONNACK 0x01 and closed [MQTT-3.1.2-2] (amqtt closes it without an answer; Mosquitto accepts 3.1).

Routing is synchronous through a :class:`~.routing.SubscriptionTrie`: no task and no log formatting
per message.

Durable ack (``ServerOptions.durable_ack``): ``Hooks.on_publish`` returns a *ticket* for a message the
application keeps; the PUBACK/PUBREC for it waits until :meth:`MqttServer.committed` reports that ticket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from iothub.mqtt.codec import (
    ACCEPTED,
    IDENTIFIER_REJECTED,
    NOT_AUTHORIZED,
    SERVER_UNAVAILABLE,
    SUBACK_FAILURE,
    UNACCEPTABLE_PROTOCOL,
    Connect,
    PacketReader,
    ProtocolViolation,
    Publish,
    Subscribe,
    UnacceptableProtocol,
    Unsubscribe,
    encode_connack,
    encode_suback,
    encode_unsuback,
)
from iothub.mqtt.connection import Connection, read_connect
from iothub.mqtt.persistence import Snapshot, rebuild, take_snapshot
from iothub.mqtt.policy import (
    Acl,
    Authenticator,
    Counters,
    Credentials,
    DisconnectReason,
    Hooks,
    Refusal,
    ServerOptions,
)
from iothub.mqtt.routing import SubscriptionTrie
from iothub.mqtt.sessions import Limits, Message, Session
from iothub.mqtt.throttle import Throttle
from iothub.mqtt.topics import matches, valid_filter
from iothub.mqtt.transport import Transport

log = logging.getLogger(__name__)
P = TypeVar("P")
_CLOSE_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class ServerStats:
    sessions_online: int
    sessions_offline: int
    queued: int  # messages waiting in client queues
    inflight: int  # messages sent and not acknowledged yet


class MqttServer(Generic[P]):
    def __init__(
        self,
        options: ServerOptions,
        authenticator: Authenticator[P],
        acl: Acl[P],
        hooks: Hooks[P],
        counters: Counters,
    ) -> None:
        self.options = options
        self.authenticator = authenticator
        self.acl = acl
        self.hooks = hooks
        self.counters = counters
        self.trie = SubscriptionTrie()
        self.sessions: dict[str, Session] = {}
        self.connections: dict[str, Connection[P]] = {}
        self.retained: dict[str, tuple[bytes, int]] = {}
        self.dirty = False  # persistent sessions or retained messages changed since the last snapshot
        self.limits = Limits(options.max_inflight, options.max_queued, counters.dropped)
        self._on_publish = hooks.on_publish  # looked up once: both are on every message's path
        self._may_publish = acl.may_publish
        self._durable_ack = options.durable_ack
        self._holding: set[Connection[P]] = set()  # connections with acknowledgements waiting for a ticket
        self._open = 0  # connections being served, from accept to close
        self._stopping = False
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._acl_logged = Throttle()
        self._protocol_logged = Throttle()

    # -- connections -------------------------------------------------------------------------------

    async def serve(self, transport: Transport) -> None:
        """Serve one accepted connection: CONNECT, CONNACK, the session, then close it."""
        try:
            limit = self.options.max_connections
            if self._stopping or (limit is not None and self._open >= limit):
                if not self._stopping:
                    self.counters.connect("full")
                transport.write(encode_connack(False, SERVER_UNAVAILABLE))
                return
            self._open += 1
            try:
                await self._connect(transport)
            finally:
                self._open -= 1
        finally:
            transport.close()
            await transport.wait_closed()

    async def _connect(self, transport: Transport) -> None:
        """From CONNECT (read, checked, authenticated) to the end of the session it opens."""
        packets = PacketReader(self.options.max_packet_bytes)
        try:
            async with asyncio.timeout(self.options.connect_timeout_s):
                connect = await read_connect(transport, packets)
        except UnacceptableProtocol as exc:
            self._refuse(transport, None, Refusal(UNACCEPTABLE_PROTOCOL, str(exc)))
            return
        except (ProtocolViolation, TimeoutError) as exc:
            log.info("closing a connection without a valid CONNECT: %s", exc or "none in time")
            return
        if connect is None:
            return
        client_id = connect.client_id
        if not client_id:
            if not connect.clean:
                refusal = Refusal(IDENTIFIER_REJECTED, "an empty client id needs clean_session=1 [MQTT-3.1.3-8]")
                self._refuse(transport, client_id, refusal)
                return
            client_id = f"auto-{secrets.token_hex(8)}"  # [MQTT-3.1.3-6]
        credentials = Credentials(client_id, connect.username, connect.password, transport.certificate_cn)
        result = await self.authenticator.authenticate(credentials)
        if isinstance(result, Refusal):
            self._refuse(transport, client_id, result)
        elif connect.will is not None and not self._may_publish(result, connect.will.topic):
            self._refuse(
                transport, client_id, Refusal(NOT_AUTHORIZED, f"may not publish its Will on {connect.will.topic!r}")
            )
        elif self._stopping:
            transport.write(encode_connack(False, SERVER_UNAVAILABLE))
        else:
            self.counters.connect("ok")
            await self._session(transport, packets, connect, client_id, result)

    def _refuse(self, transport: Transport, client_id: str | None, refusal: Refusal) -> None:
        """Answer CONNACK with the refusal's code; the connection is closed after it."""
        self.counters.connect(f"0x{refusal.code:02x}")
        who = "an MQTT client" if client_id is None else f"MQTT client {client_id!r}"
        log.warning("refused %s (CONNACK 0x%02x): %s", who, refusal.code, refusal.reason)
        transport.write(encode_connack(False, refusal.code))

    async def _session(
        self, transport: Transport, packets: PacketReader, connect: Connect, client_id: str, principal: P
    ) -> None:
        previous = self.connections.get(client_id)
        if previous is not None:  # [MQTT-3.1.4-2] the new connection takes over
            self._end(previous, DisconnectReason.TAKEN_OVER)
        session = self.sessions.get(client_id)
        present = session is not None and not connect.clean and not session.clean
        if session is not None and not present:
            self._discard(session)
            session = None
        if session is None:
            session = self.sessions[client_id] = Session(client_id, connect.clean, self.limits)
            self.dirty = self.dirty or not connect.clean
        conn = Connection(self, session, transport, packets, connect, principal, self.options.max_unacked)
        self.connections[client_id] = conn
        self._all_closed.clear()
        disconnected = False
        try:  # from here on, whatever happens, _finish unregisters the connection
            conn.send(encode_connack(present, ACCEPTED))
            session.attach(conn)
            self.hooks.on_connect(client_id, principal)
            disconnected = await conn.serve()
        finally:
            self._finish(conn, disconnected)

    def _end(self, conn: Connection[P], reason: DisconnectReason) -> None:
        """Detach ``conn`` from its session now and close it; its Will is not sent.

        ``reason`` replaces any reason it was closing for already: when its ``serve`` ends, it must
        not be reported a second time (after its successor connected) nor publish its Will.
        """
        self.hooks.on_disconnect(conn.client_id, conn.principal, reason)
        self._release(conn)
        conn.session.detach()
        conn.closing = reason
        conn.close()

    def _release(self, conn: Connection[P]) -> None:
        if self.connections.get(conn.client_id) is conn:
            del self.connections[conn.client_id]
            if not self.connections:
                self._all_closed.set()
        self._holding.discard(conn)

    def _finish(self, conn: Connection[P], disconnected: bool) -> None:
        if conn.closing is DisconnectReason.TAKEN_OVER:
            return  # reported and detached when it was taken over
        self._release(conn)
        session = conn.session
        if session.link is conn:
            session.detach()
        if session.clean and self.sessions.get(conn.client_id) is session:
            self._discard(session)
        will = conn.will
        if conn.closing is not None:
            reason = conn.closing
        elif disconnected:
            reason = DisconnectReason.CLEAN
        else:
            reason = DisconnectReason.WILL if will is not None else DisconnectReason.DROPPED
        self.hooks.on_disconnect(conn.client_id, conn.principal, reason)
        if will is not None and not disconnected and reason is not DisconnectReason.SERVER_STOPPING:
            self.route(conn.client_id, will.topic, will.payload, will.qos, will.retain)
        conn.close()

    def _discard(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self.trie.remove(topic_filter, session.client_id)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        if not session.clean:
            self.dirty = True

    def disconnect(self, client_id: str) -> bool:
        """Close ``client_id``'s connection (:attr:`DisconnectReason.CLOSED`); False if not connected."""
        conn = self.connections.get(client_id)
        if conn is None:
            return False
        conn.close(DisconnectReason.CLOSED)
        return True

    async def close(self) -> None:
        """Refuse new clients, close every connection and wait (bounded) for them to finish."""
        self._stopping = True
        for conn in list(self.connections.values()):
            conn.close(DisconnectReason.SERVER_STOPPING)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await self._all_closed.wait()

    def connected(self) -> Iterator[tuple[str, P]]:
        """Client id and principal of every live connection."""
        for client_id, conn in list(self.connections.items()):
            yield client_id, conn.principal

    def stats(self) -> ServerStats:
        online = len(self.connections)
        queued = sum(len(s.queue) for s in self.sessions.values())
        inflight = sum(len(s.inflight) for s in self.sessions.values())
        return ServerStats(online, len(self.sessions) - online, queued, inflight)

    # -- publishing --------------------------------------------------------------------------------

    def publish(self, conn: Connection[P], packet: Publish) -> int | None:
        """A client's PUBLISH: check, hand to the hooks, route; the hooks' ticket (if any) for its ack."""
        topic = packet.topic
        if topic[0] == "$":  # [MQTT-4.7.2-1]
            self.counters.acl_denied("publish")
            return None
        if not self._may_publish(conn.principal, topic):
            self._denied(conn, "publish", topic)
            return None
        ticket = self._on_publish(conn.client_id, topic, packet.payload)
        self._deliver(topic, packet.payload, packet.qos, packet.retain)
        return ticket if self._durable_ack else None

    def route(self, sender: str | None, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        """A message from the application (``sender`` None) or a Will: to the hooks, then to subscribers."""
        self._on_publish(sender, topic, payload)
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

    def _denied(self, conn: Connection[P], action: str, topic: str) -> None:
        self.counters.acl_denied(action)
        if self._acl_logged.due(conn.client_id):
            log.warning("MQTT client %r may not %s %r (logged once a minute)", conn.client_id, action, topic)
        if action == "publish" and self.options.disconnect_on_acl_violation:
            conn.close(DisconnectReason.ACL_VIOLATION)

    # -- durable ack -------------------------------------------------------------------------------

    def holding(self, conn: Connection[P]) -> None:
        self._holding.add(conn)

    def committed(self, ticket: int) -> None:
        """Every message up to ``ticket`` is committed: release their acknowledgements."""
        if self._holding:
            self._holding = {conn for conn in self._holding if conn.release_acks(ticket)}

    def protocol_error(self, conn: Connection[P], problem: str) -> None:
        self.counters.protocol_error()
        if self._protocol_logged.due(conn.client_id):  # a client that reconnects to repeat it logs once a minute
            log.warning("closing MQTT client %r (logged once a minute): %s", conn.client_id, problem)

    # -- subscriptions -----------------------------------------------------------------------------

    async def subscribe(self, conn: Connection[P], packet: Subscribe) -> None:
        session = conn.session
        codes: list[int] = []
        granted: list[tuple[str, int]] = []
        for topic_filter, qos in packet.filters:
            if not valid_filter(topic_filter):
                codes.append(SUBACK_FAILURE)
                continue
            if not self.acl.may_subscribe(conn.principal, topic_filter):
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
            await self.hooks.on_subscribed(conn.client_id, conn.principal, topic_filter)

    def unsubscribe(self, conn: Connection[P], packet: Unsubscribe) -> None:
        session = conn.session
        for topic_filter in packet.filters:
            if session.subscriptions.pop(topic_filter, None) is not None:
                self.trie.remove(topic_filter, conn.client_id)
        if not session.clean:
            self.dirty = True
        conn.send(encode_unsuback(packet.packet_id))

    # -- persistence -------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Persistent sessions and retained messages as plain data (taken on the event loop: consistent)."""
        return take_snapshot(self.retained, self.sessions.values())

    def restore(self, snapshot: Snapshot) -> None:
        """Load saved sessions and retained messages (before serving anyone)."""
        retained, sessions = rebuild(snapshot, self.limits)
        self.retained.update(retained)
        for session in sessions:
            self.sessions[session.client_id] = session
            for topic_filter, qos in session.subscriptions.items():
                self.trie.add(topic_filter, session.client_id, qos)
