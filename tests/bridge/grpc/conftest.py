"""A real ``grpc.aio`` client channel to the hub's gRPC server, and call metadata with a token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from iothub.hub.registry import Scope
from iothub.runner import Running
from iothub.v1 import devices_pb2, events_pb2, telemetry_pb2
from tests.conftest import WAIT_S

Metadata = tuple[tuple[str, str], ...]


def bearer(token: str | None) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def token_of(hub: Running, scope: Scope) -> Metadata:
    _, token = hub.hub.registry.create_token(scope, f"grpc-{scope}")
    return bearer(token)


@pytest.fixture
async def channel(hub: Running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(hub.address("grpc")) as ch:
        yield ch


@pytest.fixture
def admin(hub: Running) -> Metadata:
    """Metadata with the hub's admin token."""
    return bearer(hub.hub.first_token)


Item = events_pb2.Event | events_pb2.Gap


async def read_items(call: object, count: int) -> list[Item]:
    """Read a server stream's messages (``SubscribeResponse``, ``PresenceUpdate``) until they hold at
    least ``count`` items: each message's gap, if any, then its events. Bounded in time."""
    assert isinstance(call, grpc.aio.UnaryStreamCall)
    items: list[Item] = []
    async with asyncio.timeout(WAIT_S):
        while len(items) < count:
            message = await call.read()
            assert isinstance(message, telemetry_pb2.SubscribeResponse | devices_pb2.PresenceUpdate), message
            if message.HasField("gap"):
                items.append(message.gap)
            items.extend(message.events)
    return items


def events_of(items: list[Item]) -> list[events_pb2.Event]:
    assert all(isinstance(i, events_pb2.Event) for i in items), items
    return [i for i in items if isinstance(i, events_pb2.Event)]
