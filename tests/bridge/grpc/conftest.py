"""A real ``grpc.aio`` client channel to the hub's gRPC server, and call metadata with a token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from iothub.hub.registry import Scope
from iothub.runner import Running

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
