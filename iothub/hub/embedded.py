"""The embedded broker: the MQTT server of :mod:`iothub.mqtt` wired to the hub.

What the hub plugs into the server (:mod:`iothub.mqtt.policy`):

* authentication and ACL: :class:`~iothub.hub.auth.Authenticator` over the registry and
  :class:`~iothub.hub.auth.TopicAcl`;
* hooks (:class:`_HubHooks`): every accepted message goes to the tap (ingest), whose ticket holds its
  acknowledgement until the store has committed it (durable ack); a CONNECT of a device, or of an
  anonymous client in development mode, starts its presence, and its disconnect reason becomes a
  :class:`~iothub.hub.presence.PresenceReason` (service accounts are not part of the fleet); a
  granted subscription releases the commands queued for that device;
* counters (:class:`_MqttCounters`) and gauges: :class:`~iothub.hub.metrics.HubMetrics`;
* persistence: sessions and retained messages saved to ``broker.db`` every ``mqtt.checkpoint_s`` when
  they changed, and when the broker closes. A ``broker.db`` that cannot be opened or read stops the
  start with a :class:`~iothub.hub.errors.StoreError` naming the file (see :mod:`iothub.mqtt.persistence`);
  a save that fails is logged and tried again at the next checkpoint, and the hub serves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from iothub.hub.auth import Authenticator, Principal, PrincipalKind, TopicAcl
from iothub.hub.errors import StoreError
from iothub.hub.metrics import HubMetrics
from iothub.hub.presence import PresenceReason
from iothub.hub.settings import MqttSettings
from iothub.mqtt.amqtt_listeners import AMQTT_VERSION, AmqttListeners, ListenerConfig
from iothub.mqtt.persistence import BrokerState, StateError
from iothub.mqtt.policy import DisconnectReason, ServerOptions
from iothub.mqtt.server import MqttServer

__all__ = ["AMQTT_VERSION", "BrokerTap", "EmbeddedBroker"]

log = logging.getLogger(__name__)

SubscribedListener = Callable[[str, str], Awaitable[None]]  # (client id, filter), once its SUBACK went

_PRESENCE = {
    DisconnectReason.CLEAN: PresenceReason.CLEAN_DISCONNECT,
    DisconnectReason.WILL: PresenceReason.LAST_WILL,
    DisconnectReason.DROPPED: PresenceReason.CONNECTION_LOST,
    DisconnectReason.KEEPALIVE: PresenceReason.KEEPALIVE_TIMEOUT,
    DisconnectReason.TAKEN_OVER: PresenceReason.TAKEN_OVER,
    DisconnectReason.ACL_VIOLATION: PresenceReason.ACL_VIOLATION,
    DisconnectReason.CLOSED: PresenceReason.DISABLED,  # unless disconnect() was given another reason
    DisconnectReason.SERVER_STOPPING: PresenceReason.HUB_STOPPED,
}


class BrokerTap(Protocol):
    """What the broker tells the hub (ingest): synchronous, never blocks."""

    def on_publish(self, client_id: str | None, topic: str, payload: bytes) -> int | None:
        """Take a routed message; return a ticket when it is queued for the store (durable ack)."""

    def on_connect(self, client_id: str) -> None: ...

    def on_disconnect(self, client_id: str, reason: PresenceReason) -> None: ...


class _HubHooks:
    def __init__(self, tap: BrokerTap, on_subscribed: SubscribedListener) -> None:
        self.on_publish = tap.on_publish  # the tap's own method: no extra call on every message
        self._tap = tap
        self._subscribed = on_subscribed
        self.closed_for: dict[str, PresenceReason] = {}  # why the hub closed a client (disconnect)

    def on_connect(self, client_id: str, principal: Principal) -> None:
        if principal.in_fleet:
            self._tap.on_connect(client_id)

    def on_disconnect(self, client_id: str, principal: Principal, reason: DisconnectReason) -> None:
        presence = _PRESENCE[reason]
        closed_for = self.closed_for.pop(client_id, None)
        if reason is DisconnectReason.CLOSED and closed_for is not None:
            presence = closed_for
        if principal.in_fleet:
            self._tap.on_disconnect(client_id, presence)

    async def on_subscribed(self, client_id: str, principal: Principal, topic_filter: str) -> None:
        await self._subscribed(client_id, topic_filter)


class _MqttCounters:
    def __init__(self, metrics: HubMetrics) -> None:
        self._connects = {r: metrics.mqtt_auth.labels(r) for r in ("ok", "full", *(f"0x{c:02x}" for c in range(1, 6)))}
        self._acl_denied = {a: metrics.acl_denied.labels(a) for a in ("publish", "subscribe")}
        self._queue_full = metrics.mqtt_dropped.labels("queue_full")
        self._protocol_errors = metrics.mqtt_protocol_errors

    def connect(self, result: str) -> None:
        self._connects[result].inc()

    def acl_denied(self, action: str) -> None:
        self._acl_denied[action].inc()

    def dropped(self, client_id: str) -> None:
        self._queue_full.inc()

    def protocol_error(self) -> None:
        self._protocol_errors.inc()


def server_options(settings: MqttSettings) -> ServerOptions:
    return ServerOptions(
        max_inflight=settings.max_inflight,
        max_queued=settings.max_queued,
        max_packet_bytes=settings.max_packet_bytes,
        max_unacked=settings.max_unacked,
        durable_ack=settings.durable_ack,
        disconnect_on_acl_violation=settings.acl_violation == "disconnect",
        max_connections=settings.max_connections,
    )


def listener_config(settings: MqttSettings) -> ListenerConfig:
    tls = settings.tls
    return ListenerConfig(
        host=settings.host,
        port=settings.port,
        ws_port=settings.ws_port,
        tls_port=tls.port,
        certfile=tls.certfile,
        keyfile=tls.keyfile,
        cafile=tls.cafile,
        require_client_cert=tls.require_client_cert,
    )


class EmbeddedBroker:
    """``async with EmbeddedBroker(...) as broker``: sessions restored and listening on entry; on exit,
    connections closed, listeners shut, sessions and retained messages saved."""

    def __init__(
        self,
        settings: MqttSettings,
        auth: Authenticator,
        tap: BrokerTap,
        on_subscribed: SubscribedListener,
        metrics: HubMetrics,
        state_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self._hooks = _HubHooks(tap, on_subscribed)
        self.server = MqttServer(server_options(settings), auth, TopicAcl(), self._hooks, _MqttCounters(metrics))
        self._listeners = AmqttListeners(listener_config(settings), self.server.serve)
        self._state = BrokerState(state_file) if state_file is not None else None
        self._tasks: asyncio.TaskGroup | None = None
        self._running = False
        self._stopped = asyncio.Event()
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
        stats = self.server.stats()
        return [(("true",), stats.sessions_online), (("false",), stats.sessions_offline)]

    def _queue_gauge(self) -> list[tuple[tuple[str, ...], float]]:
        stats = self.server.stats()
        return [(("queued",), stats.queued), (("inflight",), stats.inflight)]

    @property
    def ports(self) -> dict[str, int]:
        return self._listeners.ports

    async def __aenter__(self) -> EmbeddedBroker:
        if self._state is not None:
            try:
                await asyncio.to_thread(self._state.open)
                try:
                    self.server.restore(await asyncio.to_thread(self._state.load))
                    await self._listeners.__aenter__()
                except BaseException:
                    await asyncio.to_thread(self._state.close)
                    raise
            except StateError as exc:
                raise StoreError(str(exc)) from exc
        else:
            await self._listeners.__aenter__()
        self._running = True
        if self._state is not None:
            self._tasks = asyncio.TaskGroup()
            await self._tasks.__aenter__()
            self._tasks.create_task(self._checkpoints(), name="iothub-broker-checkpoint")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._running:
            self._running = False
            await self.server.close()  # connections first: the listeners' shutdown waits for them
            await self._listeners.__aexit__(None, None, None)
        self._stopped.set()
        if self._tasks is not None:
            await self._tasks.__aexit__(None, None, None)
        if self._state is not None:
            await self._checkpoint(final=True)
            await asyncio.to_thread(self._state.close)

    async def _checkpoints(self) -> None:
        """Save sessions and retained messages every ``mqtt.checkpoint_s`` when they changed."""
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.settings.checkpoint_s)
            if not self._stopped.is_set():
                await self._checkpoint()

    async def _checkpoint(self, final: bool = False) -> None:
        if self._state is None or not self.server.dirty:
            return
        self.server.dirty = False
        snapshot = self.server.snapshot()
        try:
            await asyncio.to_thread(self._state.save, snapshot)
        except StateError as exc:
            self.server.dirty = True
            if final:
                log.error("%s; the next start restores what the last checkpoint saved", exc)
            else:
                log.error("%s; trying again in %g s", exc, self.settings.checkpoint_s)

    async def disconnect(self, client_id: str, reason: PresenceReason = PresenceReason.DISABLED) -> bool:
        """Close ``client_id``'s connection (e.g. its device was disabled); False if not connected.

        The Will goes out; ``reason`` is what its presence records.
        """
        if client_id not in self.server.connections:
            return False
        self._hooks.closed_for[client_id] = reason
        return self.server.disconnect(client_id)

    def committed(self, ticket: int) -> None:
        """The store committed every message up to ``ticket`` (durable ack)."""
        self.server.committed(ticket)

    def connected_devices(self) -> list[str]:
        """Ids of the devices (authenticated as devices) with a live connection."""
        return [cid for cid, principal in self.server.connected() if principal.kind is PrincipalKind.DEVICE]

    def subscribes(self, client_id: str, topic: str) -> bool:
        """Whether the session of ``client_id`` (connected or persistent) has a subscription to ``topic``."""
        session = self.server.sessions.get(client_id)
        return session is not None and session.subscribes(topic)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish as the hub itself (not a client): routed to subscribers, retained if asked."""
        if not self._running:
            raise RuntimeError("the broker is not running")
        self.server.route(None, topic, payload, qos, retain)
