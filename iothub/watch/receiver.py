"""A local webhook receiver (``iothub watch webhooks``): each delivery as a :class:`Delivery`, its
signature checked when a secret is given, answered with a chosen status.

Served by uvicorn on a socket bound on entry (port 0 picks a free one). A delivery whose signature
does not verify is answered 401 (the hub retries it); one that verifies, or any when no secret is
given, gets ``status`` (204 by default; 500 or 429 to try the hub's retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from iothub.hub.signing import SecretError, check, secret_key
from iothub.watch.events import WatchError, WatchEvent, format_value

REFUSED = 401
QUEUE_SIZE = 1000  # deliveries not yet printed; past this the receiver answers 503 (the hub retries)


@dataclass(frozen=True)
class Delivery:
    msg_id: str
    headers: dict[str, str]
    body: bytes
    signature: str  # "ok", "unchecked" (no secret given), or why it does not verify
    status: int  # what it was answered

    @property
    def type(self) -> str:
        return self.event().type

    def event(self) -> WatchEvent:
        try:
            message: dict[str, Any] = json.loads(self.body)
        except ValueError:
            message = {"type": "?", "data": {"body": self.body.decode(errors="replace")}}
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        assert isinstance(data, dict)
        view = {
            "webhook_id": self.msg_id, "type": message.get("type", "?"), "timestamp": message.get("timestamp"),
            "data": data, "signature": self.signature, "status": self.status,
        }  # fmt: skip
        ts = (
            int(self.headers["webhook-timestamp"]) * 1000
            if self.headers.get("webhook-timestamp", "").isdigit()
            else None
        )
        return WatchEvent(str(view["type"]), str(data.get("device_id", "")), ts, view, None, "webhooks")

    def line(self) -> str:
        """``time device type values [signature ok; answered 204; msg_...]``."""
        event = self.event()
        values = " ".join(f"{k}={format_value(v)}" for k, v in event.data["data"].items() if k != "device_id")
        verdict = "signature ok" if self.signature == "ok" else f"signature {self.signature}"
        return " ".join(p for p in (_head(event), values, f"[{verdict}; answered {self.status}; {self.msg_id}]") if p)


def _head(event: WatchEvent) -> str:
    timestamp = event.data.get("timestamp") or "-"
    return f"{timestamp} {event.device_id or '-'} {event.type}"


class Receiver:
    """``async with Receiver(host, port, secret, status) as receiver``: ``receiver.port`` is bound;
    ``async for delivery in receiver`` yields deliveries as they are answered."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: str | None = None,
        status: int = 204,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        if secret is not None:
            try:
                secret_key(secret)
            except SecretError as exc:
                raise WatchError(f"option '--secret': {exc}") from None
        self.host, self.port, self.secret, self.status = host, port, secret, status
        self._announce = announce
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(QUEUE_SIZE)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Receiver:
        try:
            sock = socket.create_server((self.host, self.port))
        except OSError as exc:
            raise WatchError(f"option '--listen': cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app, interface="asgi3", log_level="warning", access_log=False, lifespan="off")
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="iothub-watch-webhooks")
        if self._announce is not None:
            self._announce(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            yield await self._queue.get()

    def verdict(self, headers: dict[str, str], body: bytes) -> str:
        if self.secret is None:
            return "unchecked"
        return check(self.secret, headers, body, time.time()) or "ok"

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        signature = self.verdict(headers, body)
        status = self.status if signature in ("ok", "unchecked") else REFUSED
        delivery = Delivery(headers.get("webhook-id", "-"), headers, body, signature, status)
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            status = 503
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # Ctrl-C belongs to the command
