"""Stub policies for the MQTT server on its own (no hub): a table of users, an ACL of filters per user,
hooks and counters that record what they are told. The server runs on real listeners, port 0."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from iothub.mqtt.amqtt_listeners import AmqttListeners, ListenerConfig
from iothub.mqtt.codec import BAD_CREDENTIALS, NOT_AUTHORIZED
from iothub.mqtt.policy import Credentials, DisconnectReason, Refusal, ServerOptions
from iothub.mqtt.server import MqttServer
from iothub.mqtt.topics import filter_within, matches

WAIT_S = 8.0


@dataclass(frozen=True)
class User:
    """The principal: who it is and the filters it may publish to and subscribe within."""

    name: str
    publish: tuple[str, ...] = ("#",)
    subscribe: tuple[str, ...] = ("#",)


class TableAuthenticator:
    """User name -> (password, user). Without a user name, a client is let in as itself when anonymous is on."""

    def __init__(self, users: dict[str, tuple[bytes, User]] | None = None, anonymous: bool = True) -> None:
        self.users = users or {}
        self.anonymous = anonymous

    async def authenticate(self, credentials: Credentials) -> User | Refusal:
        if credentials.username is None:
            return User(credentials.client_id) if self.anonymous else Refusal(NOT_AUTHORIZED, "anonymous")
        entry = self.users.get(credentials.username)
        if entry is None or entry[0] != credentials.password:
            return Refusal(BAD_CREDENTIALS, f"{credentials.username}: unknown or wrong password")
        return entry[1]


class FilterAcl:
    def may_publish(self, principal: User, topic: str) -> bool:
        return any(matches(allowed, topic) for allowed in principal.publish)

    def may_subscribe(self, principal: User, topic_filter: str) -> bool:
        return any(filter_within(topic_filter, allowed) for allowed in principal.subscribe)


class RecordingHooks:
    """Records every call; with ``tickets`` each accepted message gets the next ticket (durable ack)."""

    def __init__(self, tickets: bool = False) -> None:
        self.tickets = tickets
        self.calls: list[tuple[Any, ...]] = []
        self._issued = 0
        self._changed = asyncio.Event()

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        self._changed.set()

    def on_publish(self, client_id: str | None, topic: str, payload: bytes) -> int | None:
        self._record("publish", client_id, topic, payload)
        if not self.tickets:
            return None
        self._issued += 1
        return self._issued

    def on_connect(self, client_id: str, principal: User) -> None:
        self._record("connect", client_id, principal.name)

    def on_disconnect(self, client_id: str, principal: User, reason: DisconnectReason) -> None:
        self._record("disconnect", client_id, reason)

    async def on_subscribed(self, client_id: str, principal: User, topic_filter: str) -> None:
        self._record("subscribed", client_id, topic_filter)

    async def wait_for(self, want: Callable[[tuple[Any, ...]], bool], within: float = WAIT_S) -> tuple[Any, ...]:
        """The first recorded call ``want`` accepts, waiting for it if need be."""
        async with asyncio.timeout(within):
            while True:
                for call in self.calls:
                    if want(call):
                        return call
                self._changed.clear()
                await self._changed.wait()

    async def reason_for(self, client_id: str, within: float = WAIT_S) -> DisconnectReason:
        call = await self.wait_for(lambda c: c[0] == "disconnect" and c[1] == client_id, within)
        reason: DisconnectReason = call[2]
        return reason


@dataclass
class RecordingCounters:
    counts: Counter[str] = field(default_factory=Counter)

    def connect(self, result: str) -> None:
        self.counts[f"connect {result}"] += 1

    def acl_denied(self, action: str) -> None:
        self.counts[f"acl_denied {action}"] += 1

    def dropped(self, client_id: str) -> None:
        self.counts[f"dropped {client_id}"] += 1

    def protocol_error(self) -> None:
        self.counts["protocol_error"] += 1


@dataclass
class Served:
    server: MqttServer[User]
    hooks: RecordingHooks
    counters: RecordingCounters
    ports: dict[str, int]

    @property
    def port(self) -> int:
        return self.ports["mqtt"]


@asynccontextmanager
async def mqtt_server(
    options: ServerOptions | None = None,
    authenticator: TableAuthenticator | None = None,
    hooks: RecordingHooks | None = None,
    ws: bool = False,
) -> AsyncIterator[Served]:
    hooks = hooks or RecordingHooks()
    counters = RecordingCounters()
    server = MqttServer(options or ServerOptions(), authenticator or TableAuthenticator(), FilterAcl(), hooks, counters)
    config = ListenerConfig("127.0.0.1", 0, ws_port=0 if ws else None)
    async with AmqttListeners(config, server.serve) as listeners:
        try:
            yield Served(server, hooks, counters, listeners.ports)
        finally:
            await server.close()
