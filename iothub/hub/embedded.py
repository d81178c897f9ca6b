"""The embedded MQTT broker: amqtt 0.12.1's listeners and CONNECT parsing, the hub's server core after it.

amqtt accepts TCP, WebSocket and TLS connections and decodes and validates CONNECT (protocol level,
flags, client id). From there :class:`~iothub.mqtt.server.MqttServer` serves the client: amqtt's
session, delivery and retained-message code breaks MQTT 3.1.1 in the ways listed in that module.
The overrides of amqtt itself, pinned to 0.12.1 (its private methods are not an API), all live in
:class:`_HubBroker`:

* ``_client_connected`` refuses clients past ``mqtt.max_connections`` with CONNACK 0x03 (amqtt
  leaves them waiting without an answer), then hands the parsed CONNECT to the server core;
* ``stream_connected`` closes the socket of a connection that ends before a valid CONNECT;
* ``_create_ssl_context`` can require client certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from iothub.hub.auth import Authenticator, PrincipalKind, certificate_cn
from iothub.hub.metrics import HubMetrics
from iothub.hub.presence import PresenceReason
from iothub.hub.settings import MqttSettings
from iothub.mqtt.persistence import BrokerState
from iothub.mqtt.server import SERVER_UNAVAILABLE, BrokerTap, MqttServer, Will, connack

AMQTT_VERSION = "0.12.1"
log = logging.getLogger(__name__)
_CONNECT_TIMEOUT_S = 10.0

__all__ = ["AMQTT_VERSION", "BrokerTap", "EmbeddedBroker"]


class _HubBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    def __init__(self, config: dict[str, Any], settings: MqttSettings, server: MqttServer, metrics: HubMetrics) -> None:
        super().__init__(config)
        self._settings = settings
        self._server = server
        self._open = 0  # client connections being served, every listener
        self._refused_full = metrics.mqtt_auth.labels("full")

    async def _client_connected(self, listener_name: str, reader: Any, writer: Any) -> None:
        limit = self._settings.max_connections
        if limit is not None and self._open >= limit:
            self._refused_full.inc()  # amqtt lets such a client hang without CONNACK
            writer.write(connack(False, SERVER_UNAVAILABLE))
            with contextlib.suppress(Exception):
                await writer.drain()
                await writer.close()
            return
        self._open += 1
        try:
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    _, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
            except (AMQTTError, MQTTError, NoDataError, TimeoutError, ConnectionError) as exc:
                log.info("no valid CONNECT on the %s listener: %s", listener_name, exc or type(exc).__name__)
                return
            will = None
            if session.will_flag:
                will = Will(session.will_topic, bytes(session.will_message), session.will_qos or 0, session.will_retain)
            credentials = {
                "username": session.username,
                "password": session.password,
                "peer_cn": certificate_cn(session.ssl_object),
                "will": will,
            }
            client_id, clean, keep_alive = session.client_id, session.clean_session, session.keep_alive
            del session  # amqtt's Session (a state machine per client) is not kept
            await self._server.serve_client(client_id, clean, keep_alive, credentials, reader, writer)
        finally:
            self._open -= 1
            with contextlib.suppress(Exception):
                await writer.drain()

    async def stream_connected(self, reader: Any, writer: Any, listener_name: str) -> None:
        # amqtt leaves the socket open when a connection ends before a valid CONNECT (a port scan,
        # a client that gives up): close it whatever way the handler ends, or the fd leaks.
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            if not writer.is_closing():
                writer.close()

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = Broker._create_ssl_context(listener)
        if self._settings.tls.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def shutdown(self) -> None:
        await self._server.close()
        await super().shutdown()


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
    # No plugins: amqtt's defaults ($SYS, event and packet loggers) cost 28-38% of throughput, and
    # authentication, ACL and sessions are the server core's.
    return {"listeners": listeners, "plugins": {}}


class EmbeddedBroker:
    """``async with EmbeddedBroker(...) as broker``: sessions restored and listening on entry; on exit,
    connections closed, sessions and retained messages saved, listeners shut."""

    def __init__(
        self,
        settings: MqttSettings,
        tap: BrokerTap,
        auth: Authenticator,
        metrics: HubMetrics,
        state_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.server = MqttServer(settings, tap, auth, metrics)
        self._metrics = metrics
        self._state = BrokerState(state_file) if state_file is not None else None
        self._broker: _HubBroker | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._stopped = asyncio.Event()
        self.ports: dict[str, int] = {}

    async def __aenter__(self) -> EmbeddedBroker:
        if self._state is not None:
            await asyncio.to_thread(self._state.open)
            self._state.restore(self.server)
        broker = _HubBroker(broker_config(self.settings), self.settings, self.server, self._metrics)
        await broker.start()
        self._broker = broker
        names = {"default": "mqtt", "ws": "mqtt_ws", "tls": "mqtts"}
        for name, server in broker._servers.items():
            self.ports[names[name]] = server.instance.sockets[0].getsockname()[1]
        if self._state is not None:
            self._tasks = asyncio.TaskGroup()
            await self._tasks.__aenter__()
            self._tasks.create_task(self._checkpoints(), name="iothub-broker-checkpoint")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
        self._stopped.set()
        if self._tasks is not None:
            await self._tasks.__aexit__(None, None, None)
        if self._state is not None:
            await self._checkpoint()
            await asyncio.to_thread(self._state.close)

    async def _checkpoints(self) -> None:
        """Save sessions and retained messages every ``mqtt.checkpoint_s`` when they changed."""
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.settings.checkpoint_s)
            if not self._stopped.is_set():
                await self._checkpoint()

    async def _checkpoint(self) -> None:
        if self._state is None or not self.server.dirty:
            return
        self.server.dirty = False
        snapshot = self._state.snapshot(self.server)
        await asyncio.to_thread(self._state.save, snapshot)

    async def disconnect(self, client_id: str, reason: PresenceReason) -> bool:
        """Close ``client_id``'s connection (e.g. its device was disabled); False if not connected."""
        return self.server.disconnect(client_id, reason)

    def on_subscribed(self, listener: Callable[[str, str], Awaitable[None]]) -> None:
        """Call ``listener(client_id, filter)`` once a client's new subscription is acknowledged."""
        self.server.subscribed_listeners.append(listener)

    def committed(self, ticket: int) -> None:
        """The store committed every message up to ``ticket`` (durable ack)."""
        self.server.committed(ticket)

    def connected_devices(self) -> list[str]:
        """Ids of the devices (authenticated as devices) with a live connection."""
        return self.server.connected(PrincipalKind.DEVICE)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish as the hub itself (not a client): routed to subscribers, retained if asked."""
        if self._broker is None:
            raise RuntimeError("the broker is not running")
        self.server.route(None, topic, payload, qos, retain)
