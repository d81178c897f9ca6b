"""The hub on an external MQTT broker (EMQX, HiveMQ, VerneMQ, Mosquitto): an ``aiomqtt`` subscriber.

``ExternalBroker(...)`` checks the TLS settings (a :class:`SettingsError` naming ``broker.cafile``
when its CA file cannot be loaded). ``async with`` it: connected and subscribed on entry (or a
:class:`SettingsError` naming ``broker.url`` when the first connection fails within
``broker.connect_timeout_s``); on exit, disconnected. In between, one task, in a task group the
broker owns, keeps the connection: when it drops, or anything at all goes wrong with it, it logs why,
reconnects after a jittered backoff (0.1 s doubling up to ``broker.reconnect_max_s``, each wait between
half and all of that) and subscribes again.

* Session: ``clean_session=0`` under a stable ``broker.client_id`` and QoS 1 subscriptions, so the
  broker keeps what devices publish while this hub is away and hands it over when it is back.
* Subscriptions: device telemetry, status and reported twin state through the shared subscription
  ``$share/{broker.group}/devices/+/...`` (several hubs split the load, each message reaches one of
  them) when this process runs ingest; command responses on ``devices/+/responses`` without sharing,
  because only the process that sent a command can match its answer (the others ignore it). A filter
  the broker refuses (SUBACK 0x80) is logged as an error; on the first connection it stops the start.
* Retained status and reported state are read once at start through a second connection without
  sharing (:meth:`ExternalBroker._read_retained`): a broker need not send them to a shared one.
* Every message goes straight to the ingest tap, as the embedded broker's do. The broker has it
  acknowledged as soon as it arrives: there is no durable acknowledgement in this mode (a hub killed
  between receipt and commit loses what ingest held); a message refused for a full ingest queue is lost.
* Presence: only what devices publish on ``devices/{id}/status`` (retained, their Last Will): the
  hub cannot see connections, so :meth:`subscribes` answers True and :meth:`connected_devices` is
  empty (disabling a device cannot disconnect it here: the broker's ACL has to).
* Commands, twin documents and ``hub/status`` go out through the same connection (:meth:`publish`,
  which waits up to ``broker.publish_timeout_s`` for the broker's acknowledgement; a broker delivering a
  backlog to the hub may acknowledge only after it); the hub's Last Will is ``hub/status`` offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from typing import Any

import aiomqtt

from iothub.hub.broker_settings import BrokerSettings, broker_address
from iothub.hub.embedded import BrokerTap
from iothub.hub.errors import HubError, SettingsError
from iothub.hub.presence import PresenceReason

log = logging.getLogger(__name__)

SHARED_KINDS = ("telemetry", "status", "state/reported")
RESPONSES = "devices/+/responses"
FIRST_BACKOFF_S = 0.1
RETAINED_KINDS = ("status", "state/reported")
RETAINED_QUIET_S = 0.5


class BrokerUnavailable(HubError):
    """The external broker is not connected (the hub is reconnecting); the message says where."""


class RefusedSubscription(HubError):
    """The broker refused one of the hub's subscriptions (its ACL, most likely)."""


def subscriptions(group: str, ingest: bool) -> list[tuple[str, int]]:
    """The topic filters (QoS 1) a hub process subscribes to."""
    shared = [(f"$share/{group}/devices/+/{kind}", 1) for kind in SHARED_KINDS] if ingest else []
    return [*shared, (RESPONSES, 1)]


def refused(filters: list[tuple[str, int]], granted: tuple[int, ...] | list[Any]) -> list[str]:
    """The filters a SUBACK refused (0x80, or an MQTT 5 reason code of 0x80 and above)."""
    codes = [int(getattr(g, "value", g)) for g in granted]
    return [topic for (topic, _), code in zip(filters, codes, strict=False) if code >= 0x80]


def backoff(previous: float, ceiling: float) -> tuple[float, float]:
    """``(wait, next)``: wait between half and all of ``previous``; the next one doubles, up to ``ceiling``."""
    return random.uniform(previous / 2, previous), min(previous * 2, ceiling)


class _StartRetained:
    """While the hub reads the retained messages at start (:meth:`ExternalBroker._read_retained`),
    they come from that reading connection alone: a broker that sends them to the shared subscription
    as well (Mosquitto does) would deliver each twice, and a reported state twice is a stale one."""

    def __init__(self, active: bool) -> None:
        self.reading = active
        self.read = 0  # retained messages the reading connection handed to ingest


def _tap_queue(
    tap: BrokerTap, start: _StartRetained, heard: asyncio.Event | None = None
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's incoming-message queue, replaced by a straight hand-over to the ingest tap. With
    ``heard`` (the connection reading retained messages at start), only retained messages are handed
    over, and ``heard`` is set for each."""

    class TapQueue(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            if heard is None and item.retain and start.reading:
                return  # the reading connection brings it
            if heard is not None:
                if not item.retain:
                    return  # live: the shared subscription brings it
                heard.set()
                start.read += 1
            payload = item.payload
            tap.on_publish(None, item.topic.value, payload if isinstance(payload, bytes) else str(payload).encode())

    return TapQueue


def _tls_context(settings: BrokerSettings) -> ssl.SSLContext:
    """The TLS context of ``mqtts://`` and ``wss://``; a :class:`SettingsError` naming ``broker.cafile``."""
    try:
        return ssl.create_default_context(cafile=str(settings.cafile) if settings.cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(
            f"setting broker.cafile [IOTHUB_BROKER__CAFILE]: cannot load {settings.cafile}: {exc}"
        ) from None


class ExternalBroker:
    def __init__(self, settings: BrokerSettings, tap: BrokerTap, *, ingest: bool, will: tuple[str, bytes]) -> None:
        assert settings.url is not None
        self.settings = settings
        self.address = broker_address(settings.url)
        self._tap = tap
        self._ingest = ingest
        self._will = aiomqtt.Will(will[0], will[1], qos=1, retain=True)
        self._tls = _tls_context(settings) if self.address.tls else None
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._settled = asyncio.Event()  # connected and subscribed, or the start refused for good
        self._task: asyncio.Task[None] | None = None
        self._retained_task: asyncio.Task[None] | None = None
        self.start_retained = _StartRetained(active=ingest)
        self._stack = contextlib.AsyncExitStack()
        self._first_error: Exception | None = None
        self.connections = 0  # successful connections so far (the first, then reconnects)
        self._connection_made = asyncio.Condition()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def ports(self) -> dict[str, int]:
        return {}  # nothing listens here

    def _new_client(self, retained: asyncio.Event | None = None) -> aiomqtt.Client:
        """The hub's client; with ``retained``, the short-lived one of :meth:`_read_retained`."""
        a = self.address
        identifier = self.settings.client_id if retained is None else f"{self.settings.client_id}-retained"
        return aiomqtt.Client(
            a.host, a.port, username=a.username, password=a.password, identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V311, clean_session=retained is not None,
            will=self._will if retained is None else None, transport=a.transport, websocket_path=a.path,
            tls_context=self._tls, keepalive=self.settings.keepalive_s, timeout=self.settings.connect_timeout_s,
            queue_type=_tap_queue(self._tap, self.start_retained, retained),
        )  # fmt: skip

    async def _read_retained(self) -> None:
        """Hand the retained device status and reported state to ingest, once, at start.

        A broker need not send retained messages to a shared subscription (MQTT 5 says it must not;
        Mosquitto and VerneMQ do not), so a hub with a new data dir would not learn of devices already
        online. A second connection, with a clean session, subscribes without sharing, takes what
        arrives with the retain flag (live messages come through the shared subscription) until
        ``RETAINED_QUIET_S`` pass with none, within ``broker.connect_timeout_s``, and disconnects. Until
        then the hub's own connection ignores retained messages (see :class:`_StartRetained`).
        """
        heard = asyncio.Event()
        try:
            async with self._new_client(heard) as client:
                filters = [(f"devices/+/{kind}", 1) for kind in RETAINED_KINDS]
                denied = refused(filters, await client.subscribe(filters))
                if denied:
                    log.error("the broker %s refused the subscription to %s: retained device status and "
                              "state are not read at start", self.address, ", ".join(denied))  # fmt: skip
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.connect_timeout_s):
                        while True:
                            heard.clear()
                            try:
                                await asyncio.wait_for(heard.wait(), RETAINED_QUIET_S)
                            except TimeoutError:
                                break
        except Exception as exc:  # the hub runs on without them; devices' next status tells
            log.warning("could not read the retained device status from %s: %s", self.address, exc)
            return
        finally:
            self.start_retained.reading = False
        log.info("read %d retained device status and state messages from %s", self.start_retained.read, self.address)

    async def __aenter__(self) -> ExternalBroker:
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._task = tasks.create_task(self._keep_connected(), name="iothub-external-broker")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await self._settled.wait()
        if not self._connected.is_set():
            await self._stop()
            if isinstance(self._first_error, RefusedSubscription):
                raise SettingsError(f"setting broker.url [IOTHUB_BROKER__URL]: {self._first_error} (check its ACL)")
            reason = self._first_error or "no answer"
            raise SettingsError(f"setting broker.url [IOTHUB_BROKER__URL]: cannot connect to {self.address}: {reason}")
        log.info("connected to the external broker %s as %s", self.address, self.settings.client_id)
        if self._ingest:
            self._retained_task = tasks.create_task(self._read_retained(), name="iothub-retained-read")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._retained_task is not None:
            self._retained_task.cancel()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self._stack.aclose()  # the task group waits for the task to end

    async def _keep_connected(self) -> None:
        delay = FIRST_BACKOFF_S
        while True:
            try:
                async with self._new_client() as client:
                    filters = subscriptions(self.settings.group, self._ingest)
                    denied = refused(filters, await client.subscribe(filters))
                    if denied:
                        why = f"the broker {self.address} refused the subscription to {', '.join(denied)}"
                        log.error(
                            "%s (setting broker.url [IOTHUB_BROKER__URL]: check the broker's ACL for its user)", why
                        )
                        if self.connections == 0:  # at start: stop it, saying why
                            self._first_error = RefusedSubscription(why)
                            self._settled.set()
                            return
                    self._client = client
                    self.connections += 1
                    self._connected.set()
                    self._settled.set()
                    async with self._connection_made:
                        self._connection_made.notify_all()
                    delay = FIRST_BACKOFF_S
                    if self.connections > 1:
                        log.info("reconnected to %s and subscribed again", self.address)
                    async for _ in client.messages:  # nothing is queued (the tap takes it); ends on a drop
                        pass
            except aiomqtt.MqttError as exc:
                if self._first_error is None:
                    self._first_error = exc
                if self._connected.is_set():
                    log.warning("lost the external broker %s: %s; reconnecting", self.address, exc)
            except Exception as exc:  # a bug or an unforeseen failure: keep trying, but say so
                if self._first_error is None:
                    self._first_error = exc
                log.exception("the connection to the external broker %s failed; reconnecting", self.address)
            finally:
                self._client = None
                self._connected.clear()
            wait, delay = backoff(delay, self.settings.reconnect_max_s)
            await asyncio.sleep(wait)

    async def wait_retained_read(self) -> int:
        """Wait until the retained messages have been read at start; how many were."""
        if self._retained_task is not None:
            await asyncio.shield(self._retained_task)
        return self.start_retained.read

    async def wait_connections(self, count: int) -> None:
        """Wait until the hub has connected (and subscribed) ``count`` times in all."""
        async with self._connection_made:
            await self._connection_made.wait_for(lambda: self.connections >= count)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish through the hub's connection, waiting up to ``broker.publish_timeout_s`` for it to be up."""
        limit = self.settings.publish_timeout_s
        try:
            async with asyncio.timeout(limit):
                while True:
                    client = self._client
                    if client is not None:
                        try:
                            await client.publish(topic, payload, qos=qos, retain=retain)
                            return
                        except aiomqtt.MqttError:
                            if self._client is client:
                                raise
                    await self._connected.wait()
        except (TimeoutError, aiomqtt.MqttError) as exc:
            why = (
                f"no acknowledgement within {limit:g} s (a backlog ahead of it?)"
                if self.connected
                else "it is not reachable"
            )
            raise BrokerUnavailable(f"cannot publish on {topic!r} through the broker {self.address}: {why}") from exc

    def subscribes(self, client_id: str, topic: str) -> bool:
        return True  # the broker's subscriptions are not visible from here

    def committed(self, ticket: int) -> None:
        """Nothing to release: the broker had each message acknowledged on arrival."""

    def connected_devices(self) -> list[str]:
        return []

    async def disconnect(self, client_id: str, reason: PresenceReason = PresenceReason.DISABLED) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {"url": str(self.address), "client_id": self.settings.client_id, "group": self.settings.group}
