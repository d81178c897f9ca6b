"""Commands to devices: publish ``devices/{id}/commands/{name}``, wait for the matching response.

:meth:`Commands.send` is what the REST, WebSocket and gRPC bridges call. A device's answer comes back
through ingest (:meth:`Commands.on_response`); answers to unknown request ids or from another device
are refused and counted like any bad device message.

A command for an offline device fails at once (:class:`DeviceOffline`) unless the caller asks to
queue it: then it is published when the device subscribes to its commands again (not merely when it
connects: it would miss what comes before its SUBSCRIBE), within the same timeout; a device with a
persistent session that subscribes to it gets it from the broker's session queue as it reconnects. A command for an
online device that has no subscription to it yet (it has just connected, say) waits the same way
rather than being published to nobody. At most ``MAX_QUEUED`` commands wait per device; more are
refused.

Errors::

    CommandError
    ├── UnknownDevice    not in the registry (HTTP 404)
    ├── DeviceOffline    offline or disabled, and not queued (HTTP 409)
    ├── CommandTimeout   no answer in time (HTTP 504)
    ├── HubUnavailable   the external broker cannot take the publish now (HTTP 503)
    └── BadCommand       bad name, arguments or timeout, or the queue is full (HTTP 400)
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from iothub.devices import CommandResponse, RejectReason, TopicKind, is_valid_id, topic_for
from iothub.hub.errors import HubError
from iothub.hub.external import BrokerUnavailable
from iothub.hub.fleet import Fleet
from iothub.hub.registry import Registry
from iothub.mqtt.topics import matches

log = logging.getLogger(__name__)
MAX_QUEUED = 100
MAX_TIMEOUT_S = 300.0


class CommandError(HubError):
    pass


class UnknownDevice(CommandError):
    pass


class DeviceOffline(CommandError):
    pass


class CommandTimeout(CommandError):
    pass


class BadCommand(CommandError):
    pass


class HubUnavailable(CommandError):
    """The command could not be published: the external broker is unreachable or did not acknowledge."""


class Publisher(Protocol):
    """Where commands (and twins) publish: the hub, which routes through its broker."""

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...

    def subscribes(self, client_id: str, topic: str) -> bool:
        """Whether ``client_id`` has a subscription that ``topic`` reaches."""


@dataclass(frozen=True)
class CommandResult:
    id: str
    device_id: str
    name: str
    ok: bool
    result: dict[str, Any] | None
    error: str | None
    latency_ms: int

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "device_id": self.device_id, "name": self.name, "ok": self.ok}
        if self.ok:
            out["result"] = self.result or {}
        else:
            out["error"] = self.error
        out["latency_ms"] = self.latency_ms
        return out

    def event_data(self) -> dict[str, Any]:
        """The data of its ``command_result`` event: the view, with the request id as ``request_id``
        (an event's ``id`` is its event id)."""
        out = self.view()
        out["request_id"] = out.pop("id")
        return out


@dataclass
class _Pending:
    id: str
    device_id: str
    name: str
    payload: bytes
    future: asyncio.Future[CommandResult]
    sent_ns: int = field(default_factory=time.monotonic_ns)


class Commands:
    def __init__(self, registry: Registry, fleet: Fleet, publisher: Publisher) -> None:
        self.registry = registry
        self.fleet = fleet
        self.publisher = publisher
        self._pending: dict[str, _Pending] = {}
        self._queued: defaultdict[str, deque[_Pending]] = defaultdict(deque)

    async def send(
        self, device_id: str, name: str, args: dict[str, Any], timeout_s: float = 10.0, queue: bool = False
    ) -> CommandResult:
        if not is_valid_id(name):
            raise BadCommand(f"command name {name!r} breaks the rule [A-Za-z0-9_.-]{{1,64}}")
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise BadCommand(f"timeout {timeout_s} s is outside (0, {MAX_TIMEOUT_S:g}]")
        device = await asyncio.to_thread(self.registry.find_device, device_id)
        if device is None:
            raise UnknownDevice(f"no device {device_id!r}")
        if not device.enabled:
            raise DeviceOffline(f"device {device_id!r} is disabled")
        state = self.fleet.get(device_id)
        online = state is not None and state.online
        if not online and not queue:
            since = f" since {state.presence_view()['since']} ({state.reason.value})" if state else ""
            raise DeviceOffline(f"device {device_id!r} is offline{since}; queue=true delivers it when it reconnects")
        # Published when a session of the device subscribes to it: a persistent session holds it for
        # an offline device (QoS 1) and delivers it when the device is back, SUBSCRIBE or not.
        reachable = self.publisher.subscribes(device_id, topic_for(device_id, TopicKind.COMMAND, name))
        if not reachable and len(self._queued[device_id]) >= MAX_QUEUED:
            raise BadCommand(f"device {device_id!r} already has {MAX_QUEUED} queued commands")
        request_id = secrets.token_hex(8)
        payload = json.dumps({"id": request_id, "args": args}).encode()
        pending = _Pending(request_id, device_id, name, payload, asyncio.get_running_loop().create_future())
        self._pending[request_id] = pending
        try:
            if reachable:
                await self._publish(pending)
            else:
                self._queued[device_id].append(pending)
            async with asyncio.timeout(timeout_s):
                return await pending.future
        except TimeoutError:
            where = "sent"
            if pending in self._queued.get(device_id, ()):
                where = "queued: the device is not subscribed to it" if online else "queued for an offline device"
            raise CommandTimeout(
                f"device {device_id!r} did not answer {name!r} within {timeout_s:g} s ({where})"
            ) from None
        finally:
            self._pending.pop(request_id, None)
            queued = self._queued.get(device_id)
            if queued is not None and pending in queued:
                queued.remove(pending)

    async def _publish(self, pending: _Pending) -> None:
        pending.sent_ns = time.monotonic_ns()
        topic = topic_for(pending.device_id, TopicKind.COMMAND, pending.name)
        try:
            await self.publisher.publish(topic, pending.payload, qos=1)
        except BrokerUnavailable as exc:
            raise HubUnavailable(f"command {pending.name!r} for {pending.device_id!r} not sent: {exc}") from None

    def on_response(self, device_id: str, response: CommandResponse) -> dict[str, Any] | RejectReason:
        """Match a device's response; the event data when it answers a pending command."""
        pending = self._pending.get(response.id)
        if pending is None:
            return RejectReason.UNKNOWN_REQUEST
        if pending.device_id != device_id:
            return RejectReason.WRONG_DEVICE
        result = CommandResult(
            pending.id, device_id, pending.name, response.ok,
            (response.result or {}) if response.ok else None, response.error,
            (time.monotonic_ns() - pending.sent_ns) // 1_000_000,
        )  # fmt: skip
        if not pending.future.done():
            pending.future.set_result(result)
        return result.event_data()

    async def on_subscribed(self, client_id: str, topic_filter: str) -> None:
        """A client subscribed: deliver the queued commands of that device the filter covers."""
        queued = self._queued.get(client_id)
        if not queued:
            return
        for pending in list(queued):
            if pending in queued and matches(topic_filter, topic_for(client_id, TopicKind.COMMAND, pending.name)):
                queued.remove(pending)
                try:
                    await self._publish(pending)
                except HubUnavailable as exc:  # the caller waiting on it hears why
                    log.warning("%s", exc)
                    if not pending.future.done():
                        pending.future.set_exception(exc)
