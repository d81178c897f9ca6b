"""A WebSocket client for the hub's live protocol (the ``websockets`` package), with a deadline on
every wait."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from iothub.runner import Running
from tests.conftest import WAIT_S

Frame = dict[str, Any]


@dataclass
class WsClient:
    connection: ClientConnection

    async def send(self, type: str, **fields: Any) -> None:
        await self.connection.send(json.dumps({"type": type, **fields}))

    async def next(self, within: float = WAIT_S) -> Frame:
        async with asyncio.timeout(within):
            frame: Frame = json.loads(await self.connection.recv())
        return frame

    async def until(self, match: Callable[[Frame], bool], within: float = WAIT_S) -> Frame:
        """The first frame that matches; the others are skipped."""
        async with asyncio.timeout(within):
            while True:
                frame = await self.next(within)
                if match(frame):
                    return frame

    async def subscribe(self, sub_id: str, **fields: Any) -> None:
        """Subscribe and wait until the hub routes to the subscription."""
        await self.send("subscribe", id=sub_id, **fields)
        answer = await self.next()
        assert answer == {"type": "subscribed", "subscription": sub_id}, answer

    async def closed(self, within: float = WAIT_S) -> tuple[int | None, str]:
        """Read until the hub closes; its close code and reason."""
        async with asyncio.timeout(within):
            try:
                while True:
                    await self.connection.recv()
            except ConnectionClosed as closed:
                rcvd = closed.rcvd
                return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


def ws_url(running: Running) -> str:
    return f"ws://{running.address('http')}/api/v1/ws"


@asynccontextmanager
async def ws_client(
    running: Running, token: str | None = None, *, header: bool = True, url: str | None = None, **kwargs: Any
) -> AsyncIterator[WsClient]:
    """A connection that authenticates with ``token`` (the admin token by default) in the header;
    ``header=False`` sends no token at all."""
    token = token or running.hub.first_token
    headers = {"Authorization": f"Bearer {token}"} if header else None
    # Unbounded receive queue: a test that stops reading early must still get through the closing
    # handshake (with a full queue the client stops reading, and the hub's close frame waits behind).
    kwargs.setdefault("max_queue", None)
    async with asyncio.timeout(WAIT_S):
        connection = await connect(url or ws_url(running), additional_headers=headers, **kwargs)
    try:
        yield WsClient(connection)
    finally:
        async with asyncio.timeout(WAIT_S):
            await connection.close()
