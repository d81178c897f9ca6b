"""The embedded MQTT broker: amqtt 0.12.1 with the hub's tap, as an async context manager.

Every override of amqtt's behaviour lives in :class:`_HubBroker`, pinned to amqtt 0.12.1 (its private
methods are not an API). The tap is called synchronously, in the order the broker routes messages,
and must never block:

* ``Broker._broadcast_message`` is the one path every routed message takes (client PUBLISH after the
  ACL, Last Will, internal publish): the tap sees each exactly once, with no task per message
  (amqtt's ``on_broker_message_broadcast`` hook costs a task per message and misses Wills);
* ``Broker._handle_disconnect`` tells a DISCONNECT from a dropped connection before the Will goes out,
  and from connections the hub itself closes on shutdown;
* ``Broker.stream_connected`` closes every TCP connection's socket when its handler ends;
* ``Broker._publish_retained_messages_for_subscription`` sends retained messages only for a
  subscription just made [MQTT-3.3.1-6];
* ``_authenticate`` and ``_topic_filtering`` ask :mod:`iothub.hub.auth` directly (amqtt's plugin
  path starts a task per check), and the protocol handler answers CONNACK with the refusal's code;
* ``handle_read_timeout`` closes a client silent for 1.5x its keepalive [MQTT-3.1.2-24];
* ``_delete_session`` waits for authentication, then takes over a live connection [MQTT-3.1.4-2];
* ``_handle_client_session`` puts back the session a refused client displaced;
* ``_client_connected`` refuses clients past ``mqtt.max_connections`` with CONNACK 0x03;
* ``_handle_message_delivery`` drops a client's publish to a ``$`` topic and keeps serving it;
* connects arrive through the documented ``on_broker_client_connected`` plugin hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BasePlugin

from iothub.hub.auth import NOT_AUTHORIZED, Authenticator, Principal, PrincipalKind, Refusal, certificate_cn
from iothub.hub.auth import may_publish as acl_publish
from iothub.hub.auth import may_subscribe as acl_subscribe
from iothub.hub.metrics import HubMetrics
from iothub.hub.presence import PresenceReason
from iothub.hub.settings import MqttSettings
from iothub.hub.topicfilter import matches

AMQTT_VERSION = "0.12.1"
log = logging.getLogger(__name__)


class BrokerTap(Protocol):
    def on_publish(self, client_id: str | None, topic: str, payload: bytes) -> None: ...

    def on_connect(self, client_id: str) -> None: ...

    def on_disconnect(self, client_id: str, reason: PresenceReason) -> None: ...


class ConnectionEvents(BasePlugin[Any]):  # type: ignore[misc]
    """Forwards amqtt's connect hook to the tap (set by :class:`EmbeddedBroker` after loading)."""

    tap: BrokerTap | None = None

    async def on_broker_client_connected(self, *, client_id: str, client_session: Any) -> None:
        if self.tap is not None:
            self.tap.on_connect(client_id)


_CONNACK_SERVER_UNAVAILABLE = bytes([0x20, 0x02, 0x00, 0x03])
_PRINCIPAL = "iothub.principal"
_CONNACK = "iothub.connack"
_LOG_EVERY_S = 60.0


class _HubProtocolHandler(BrokerProtocolHandler):  # type: ignore[misc]
    keepalive_expired = False

    async def mqtt_connack_authorize(self, authorize: bool) -> None:
        """CONNACK with the refusal's own code (amqtt always answers 0x05)."""
        code = 0 if authorize else self.session.attributes.get(_CONNACK, NOT_AUTHORIZED)
        await self._send_packet(ConnackPacket.build(self.session.parent, code))

    def handle_read_timeout(self) -> None:
        """[MQTT-3.1.2-24] nothing heard for 1.5x the keepalive: close, and let the Will go out.

        amqtt's reader waits ``session.keep_alive`` (set to 1.5x by _HubBroker) and then calls this,
        which amqtt leaves empty; ending the reader task takes the usual lost-connection path.
        """
        self.keepalive_expired = True
        if self._reader_task is not None:
            self._reader_task.cancel()


class _HubBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    def __init__(
        self,
        config: dict[str, Any],
        settings: MqttSettings,
        tap: BrokerTap,
        auth: Authenticator,
        metrics: HubMetrics,
    ) -> None:
        super().__init__(config)
        self._settings = settings
        self._tap = tap
        self._auth = auth
        self._stopping = False
        self._new_subscriptions: set[tuple[str, str]] = set()  # (client id, filter) awaiting retained
        self._closing: dict[str, PresenceReason] = {}  # connections the hub is closing, and why
        self._deferred_deletes: set[str] = set()  # clean-session CONNECTs waiting for authentication
        self._superseded: set[int] = set()  # handlers of connections taken over (already reported)
        # awaited after a client's new subscription is acknowledged: (client id, filter)
        self.subscribed_listeners: list[Callable[[str, str], Awaitable[None]]] = []
        self._auth_results = {r: metrics.mqtt_auth.labels(r) for r in ("ok", "0x02", "0x04", "0x05")}
        self._acl_denied = {a: metrics.acl_denied.labels(a.value) for a in (Action.PUBLISH, Action.SUBSCRIBE)}
        self._acl_logged: dict[str, float] = {}
        self._open = 0  # client connections being served, every listener
        self._refused_full = metrics.mqtt_auth.labels("full")

    # -- authentication and ACL --------------------------------------------------------------------

    async def _initialize_client_session(self, *args: Any) -> tuple[Any, Any]:
        handler, session = await super()._initialize_client_session(*args)
        handler.__class__ = _HubProtocolHandler  # CONNACK codes and keepalive differ
        if session.keep_alive > 0:
            session.keep_alive = session.keep_alive * 1.5  # how long the reader waits for a packet
        return handler, session

    async def _delete_session(self, client_id: str) -> None:
        """[MQTT-3.1.4-2] amqtt drops the old session of a clean-session CONNECT *before* authenticating.

        That let anyone who knows a device's id wipe its subscriptions. The deletion (and the takeover
        of a live connection) now waits for :meth:`_authenticate` to accept the new client.
        """
        self._deferred_deletes.add(client_id)

    async def _handle_client_session(self, reader: Any, writer: Any, session: Any, *args: Any) -> None:
        previous = self._sessions.get(session.client_id)
        await super()._handle_client_session(reader, writer, session, *args)
        if _CONNACK in session.attributes and self._sessions.get(session.client_id, (None,))[0] is session:
            # amqtt registers even a refused client under its id, which cut the real one off
            # from everything routed to it; put the real one back.
            if previous is None:
                del self._sessions[session.client_id]
            else:
                self._sessions[session.client_id] = previous

    async def _take_over(self, client_id: str) -> None:
        session, handler = self._sessions.get(client_id, (None, None))
        if session is not None and handler is not None and session.transitions.state == "connected":
            session.will_flag = False  # the device is alive on its new connection: no Will
            self._superseded.add(id(handler))
            self._tap.on_disconnect(client_id, PresenceReason.TAKEN_OVER)
            if handler.writer is not None:
                await handler.writer.close()
        await super()._delete_session(client_id)

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        result = await self._auth.authenticate(
            client_id=session.client_id,
            username=session.username,
            password=session.password,
            will_topic=session.will_topic if session.will_flag else None,
            peer_cn=certificate_cn(session.ssl_object),
        )
        if isinstance(result, Refusal):
            self._deferred_deletes.discard(session.client_id)
            session.attributes[_CONNACK] = result.code
            self._auth_results[f"0x{result.code:02x}"].inc()
            log.warning("refused MQTT client %r (CONNACK 0x%02x): %s", session.client_id, result.code, result.reason)
            return False
        session.attributes[_PRINCIPAL] = result
        self._auth_results["ok"].inc()
        if session.client_id in self._deferred_deletes:
            self._deferred_deletes.discard(session.client_id)
            await self._take_over(session.client_id)
        return True

    async def _topic_filtering(self, session: Any, topic: str, action: Action) -> bool:
        if action is Action.RECEIVE:
            return True  # subscriptions were checked when made
        principal: Principal | None = session.attributes.get(_PRINCIPAL)
        if principal is None:
            return False
        allowed = acl_publish(principal, topic) if action is Action.PUBLISH else acl_subscribe(principal, topic)
        if not allowed:
            self._acl_denied[action].inc()
            now = time.monotonic()
            if now - self._acl_logged.get(principal.name, -_LOG_EVERY_S) >= _LOG_EVERY_S:
                self._acl_logged[principal.name] = now
                log.warning(
                    "%s %r may not %s %r (logged once a minute)",
                    principal.kind,
                    principal.name,
                    action,
                    topic,
                )
            if action is Action.PUBLISH and self._settings.acl_violation == "disconnect":
                await self.disconnect(session.client_id, PresenceReason.ACL_VIOLATION)
        return allowed

    async def disconnect(self, client_id: str, reason: PresenceReason) -> bool:
        """Close a client's connection from the hub's side; False when it is not connected."""
        session, handler = self._sessions.get(client_id, (None, None))
        if handler is None or handler.writer is None or session.transitions.state != "connected":
            return False
        self._closing[client_id] = reason
        await handler.writer.close()
        return True

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = Broker._create_ssl_context(listener)
        if self._settings.tls.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def shutdown(self) -> None:
        self._stopping = True  # amqtt closes sessions before its own state says "stopping"
        await super().shutdown()

    async def _client_connected(self, listener_name: str, reader: Any, writer: Any) -> None:
        """Refuse a client at once when ``mqtt.max_connections`` are open (amqtt lets it hang unanswered)."""
        limit = self._settings.max_connections
        if limit is not None and self._open >= limit:
            self._refused_full.inc()
            writer.write(_CONNACK_SERVER_UNAVAILABLE)
            with contextlib.suppress(Exception):
                await writer.drain()
                await writer.close()
            return
        self._open += 1
        try:
            await super()._client_connected(listener_name, reader, writer)
        finally:
            self._open -= 1

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: Any) -> bool:
        """[MQTT-4.7.2-1] ``$`` topics are the server's: a client's publish to one is dropped and counted.

        amqtt ends the client's message loop instead, leaving it connected but never served again.
        """
        message = wait_deliver.result()
        if message is not None and message.topic and message.topic.startswith("$"):
            self._acl_denied[Action.PUBLISH].inc()
            return True
        result: bool = await super()._handle_message_delivery(client_session, handler, wait_deliver)
        return result

    async def stream_connected(self, reader: Any, writer: Any, listener_name: str) -> None:
        # amqtt leaves the socket open when a connection ends before a valid CONNECT (a port scan,
        # a client that gives up): close it whatever way the handler ends, or the fd leaks.
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            if not writer.is_closing():
                writer.close()

    async def add_subscription(self, subscription: tuple[str, int], session: Any) -> int:
        code: int = await super().add_subscription(subscription, session)
        if code != 0x80:
            self._new_subscriptions.add((session.client_id, subscription[0]))
        return code

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Any) -> None:
        """[MQTT-3.3.1-6] retained messages go to a client only for a subscription it has just made.

        amqtt also calls this at every connect for every filter of every client, which sends other
        clients' matches and costs (filters x retained) per connect: 1,000 devices never settle.
        """
        key = (session.client_id, subscription[0])
        if key not in self._new_subscriptions:
            return
        self._new_subscriptions.discard(key)
        handler = self._get_handler(session)
        if handler is None:
            return
        topic_filter, qos = subscription
        publishes = [
            handler.mqtt_publish(topic, message.data, qos if message.qos is None else min(qos, message.qos), True)
            for topic, message in self._retained_messages.items()
            if matches(topic_filter, topic)
        ]
        if publishes:
            await asyncio.gather(*publishes)
        for listener in self.subscribed_listeners:
            await listener(session.client_id, topic_filter)

    async def _broadcast_message(
        self, session: Any, topic: str | None, data: bytes | bytearray | None, force_qos: int | None = None
    ) -> None:
        if topic is not None and data is not None:
            self._tap.on_publish(session.client_id if session is not None else None, topic, bytes(data))
        await super()._broadcast_message(session, topic, data, force_qos)

    async def _handle_disconnect(self, client_session: Any, handler: Any, disconnect_waiter: Any) -> None:
        if id(handler) in self._superseded:
            self._superseded.discard(id(handler))
            await super()._handle_disconnect(client_session, handler, disconnect_waiter)
            return
        if self._stopping:
            reason = PresenceReason.HUB_STOPPED
        elif client_session.client_id in self._closing:
            reason = self._closing.pop(client_session.client_id)
        elif getattr(handler, "keepalive_expired", False):
            reason = PresenceReason.KEEPALIVE_TIMEOUT
        elif isinstance(disconnect_waiter.result(), DisconnectPacket):
            reason = PresenceReason.CLEAN_DISCONNECT
        elif client_session.will_flag:
            reason = PresenceReason.LAST_WILL
        else:
            reason = PresenceReason.CONNECTION_LOST
        self._tap.on_disconnect(client_session.client_id, reason)
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)


def broker_config(settings: MqttSettings) -> dict[str, Any]:
    listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"{settings.host}:{settings.port}"}}
    if settings.ws_port is not None:
        listeners["ws"] = {"type": "ws", "bind": f"{settings.host}:{settings.ws_port}"}
    tls = settings.tls
    if tls.port is not None:
        listeners["tls"] = {
            "type": "tcp",
            "bind": f"{settings.host}:{tls.port}",
            "ssl": True,
            "certfile": str(tls.certfile),
            "keyfile": str(tls.keyfile),
            **({"cafile": str(tls.cafile)} if tls.cafile else {}),
        }
    return {
        "listeners": listeners,
        # Our own plugin list replaces amqtt's defaults ($SYS, event and packet loggers cost 28-38%);
        # authentication and ACL are overrides of _HubBroker, not plugins (no task per check).
        "plugins": {f"{__name__}.ConnectionEvents": {}},
    }


class EmbeddedBroker:
    """``async with EmbeddedBroker(settings, tap) as broker``: listening on entry, shut down on exit."""

    def __init__(self, settings: MqttSettings, tap: BrokerTap, auth: Authenticator, metrics: HubMetrics) -> None:
        self.settings = settings
        self._tap = tap
        self._auth = auth
        self._metrics = metrics
        self._broker: _HubBroker | None = None
        self._listeners: list[Callable[[str, str], Awaitable[None]]] = []
        self.ports: dict[str, int] = {}

    async def __aenter__(self) -> EmbeddedBroker:
        broker = _HubBroker(broker_config(self.settings), self.settings, self._tap, self._auth, self._metrics)
        broker.subscribed_listeners = self._listeners
        for plugin in broker.plugins_manager.plugins:
            if isinstance(plugin, ConnectionEvents):
                plugin.tap = self._tap
        await broker.start()
        self._broker = broker
        names = {"default": "mqtt", "ws": "mqtt_ws", "tls": "mqtts"}
        for name, server in broker._servers.items():
            self.ports[names[name]] = server.instance.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None

    async def disconnect(self, client_id: str, reason: PresenceReason) -> bool:
        """Close ``client_id``'s connection (e.g. its device was disabled); False if not connected."""
        return self._broker is not None and await self._broker.disconnect(client_id, reason)

    def on_subscribed(self, listener: Callable[[str, str], Awaitable[None]]) -> None:
        """Call ``listener(client_id, filter)`` once a client's new subscription is acknowledged."""
        self._listeners.append(listener)

    def connected_devices(self) -> list[str]:
        """Ids of the devices (authenticated as devices) with a live connection."""
        if self._broker is None:
            return []
        return [
            cid
            for cid, (session, _) in self._broker._sessions.items()
            if session.transitions.state == "connected"
            and getattr(session.attributes.get(_PRINCIPAL), "kind", None) is PrincipalKind.DEVICE
        ]

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish as the hub itself (not a client): routed to subscribers, retained if asked."""
        if self._broker is None:
            raise RuntimeError("the broker is not running")
        await self._broker.internal_message_broadcast(topic, payload, qos)
        if retain:
            await self._broker.retain_message(None, topic, payload, qos)
