"""A small SSE reader over a real HTTP stream (httpx), with a deadline on every wait."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SseEvent:
    event: str
    data: str
    id: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseStream:
    response: httpx.Response
    retry: int | None = None
    comments: int = 0
    _lines: AsyncIterator[str] | None = field(default=None, repr=False)

    async def next(self, within: float = 10.0) -> SseEvent:
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        fields: dict[str, str] = {}
        async with asyncio.timeout(within):
            async for line in self._lines:
                if line == "":
                    if "data" in fields:
                        return SseEvent(fields.get("event", "message"), fields["data"], fields.get("id"))
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "retry":
                    self.retry = int(value)
                else:
                    fields[name] = value
        raise EOFError("the stream ended")

    async def heartbeats(self, count: int, within: float = 10.0) -> None:
        """Read until ``count`` comments (heartbeats) have come in all; an event meanwhile is an error."""
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        async with asyncio.timeout(within):
            while self.comments < count:
                line = await anext(self._lines, None)
                if line is None:
                    raise EOFError("the stream ended")
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith(("data", "event", "id")):
                    raise AssertionError(f"an event on a stream that should be idle: {line!r}")

    async def until(self, match: Any, within: float = 10.0) -> SseEvent:
        async with asyncio.timeout(within):
            while True:
                event = await self.next(within)
                if match(event):
                    return event


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, params: Any = None, headers: dict[str, str] | None = None
) -> AsyncIterator[SseStream]:
    async with client.stream("GET", "/api/v1/stream", params=params, headers=headers) as response:
        yield SseStream(response)
