"""A webhook receiver on loopback (asyncio's own server, HTTP/1.1 with keep-alive) that records what
it gets and answers as the test tells it: a status, headers, or a delay before answering."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import WAIT_S


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.monotonic() when it arrived

    @property
    def msg_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Receiver:
    answer: Callable[[Received], Reply] = lambda _: Reply()
    received: list[Received] = field(default_factory=list)
    port: int = 0
    connections: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def accepted(self) -> list[Received]:
        """What was answered with a 2xx (the deliveries that count)."""
        return [r for r in self.received if 200 <= self.answer_of(r).status < 300]

    def answer_of(self, received: Received) -> Reply:
        return self._answers[id(received)]

    async def wait_for(self, check: Callable[[list[Received]], bool], within: float = WAIT_S) -> None:
        async with asyncio.timeout(within):
            while not check(self.received):
                self._changed.clear()
                await self._changed.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                got = Received(path, headers, body, time.monotonic())
                reply = self.answer(got)
                self._answers[id(got)] = reply
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)  # a slow receiver, not synchronisation
                self.received.append(got)
                self._changed.set()
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                text = f"status {reply.status}".encode()
                writer.write(f"HTTP/1.1 {reply.status} X\r\nContent-Length: {len(text)}\r\n{extra}\r\n".encode() + text)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def __post_init__(self) -> None:
        self._answers: dict[int, Reply] = {}
        self._tasks: set[asyncio.Task[Any]] = set()


@contextlib.asynccontextmanager
async def receiver(answer: Callable[[Received], Reply] | None = None) -> AsyncIterator[Receiver]:
    r = Receiver() if answer is None else Receiver(answer)
    server = await asyncio.start_server(r._serve, "127.0.0.1", 0)
    r.port = server.sockets[0].getsockname()[1]
    async with server:
        yield r
        server.close()
        for task in list(r._tasks):  # a connection held open (keep-alive, a slow answer) ends with the test
            task.cancel()
