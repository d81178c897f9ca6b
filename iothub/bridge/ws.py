"""WebSocket: ``/api/v1/ws``, one two-way channel for apps: live events in, commands out.

JSON text frames; the messages and their rules are the live protocol's
(:mod:`iothub.bridge.live`), shared with gRPC's ``HubService.Connect``. Here: the handshake and
authentication, the frames on the wire, the close codes, and each connection's writes.

- Authentication: a token in ``Authorization: Bearer`` or ``?access_token=``; else the first frame
  must be ``{"type": "auth", "token": ...}`` within ``ws.auth_timeout_s``.
- Event frames are built once per event by the stream core (the part after the subscription id);
  each connection puts its subscription id in front: one string concatenation per frame.
- Close codes: 4401 missing, bad or revoked token; 4403 a command without the ``command`` scope;
  1008 a client too slow for its queue (``ws.queue_size``/``ws.max_dropped``) or whose writes stay
  blocked for ``ws.send_timeout_s``; 1009 a frame over ``ws.max_message_bytes`` (uvicorn's
  ``ws_max_size``); 1001 the hub stopping; 1011 no answer to the hub's pings (uvicorn's keepalive,
  ``ws.ping_interval_s``/``ws.ping_timeout_s``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from iothub.bridge.auth import presented_token, verify
from iothub.bridge.errors import BridgeError
from iothub.bridge.live import (
    Auth,
    Authenticated,
    Delivery,
    End,
    EndReason,
    ProtocolError,
    Reply,
    Session,
    SessionLimits,
    parse,
)
from iothub.bridge.streams import Limits
from iothub.bridge.uvicorn_ws import ABORT, SEND_TEXTS
from iothub.bridge.watchdog import Ending, Watched, WatchedChannel, WatchedWriter
from iothub.hub.core import Hub
from iothub.hub.events import HubEvent
from iothub.hub.records import Scope, TokenRecord
from iothub.hub.settings import WsSettings

log = logging.getLogger(__name__)

UNAUTHORIZED = 4401
FORBIDDEN = 4403
CLOSE_CODES = {
    EndReason.UNAUTHORIZED: UNAUTHORIZED,
    EndReason.FORBIDDEN: FORBIDDEN,
    EndReason.SLOW_CLIENT: 1008,
    EndReason.STOPPING: 1001,
}
CLOSE_TIMEOUT_S = 1.0  # a close frame that cannot be written in this time: the connection is cut


def ws_frame(event: HubEvent, body: bytes) -> bytes:
    """An event frame without its start (``{"type":"event","subscription":...``), once per event."""
    return b',"id":%d,"event":"%s","data":%s}' % (event.id, event.type.value.encode(), body)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _reason(message: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    encoded = message.encode()
    return message if len(encoded) <= 123 else encoded[:120].decode(errors="ignore") + "..."


class WsHub(WatchedChannel):
    """The WebSocket channel of the stream core, the open connections, and their watchdog. Closing
    it (:meth:`close`) tells every connection the hub is stopping (1001) and stops routing."""

    def __init__(self, hub: Hub, settings: WsSettings) -> None:
        limits = Limits(settings.queue_size, settings.max_dropped, settings.replay_limit)
        super().__init__(hub, "ws", "WebSocket", ws_frame, limits, settings.send_timeout_s)
        self.hub = hub
        self.settings = settings
        self.session_limits = SessionLimits(settings.max_subscriptions, settings.max_pending_commands)
        self.on_close.append(self._end_all)
        self.connections: set[_Connection] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        hub.metrics.gauge_callback(
            "iothub_ws_connections", "Open WebSocket connections", (), lambda: [((), len(self.connections))]
        )

    def _end_all(self) -> None:
        for connection in list(self.connections):
            connection.end(EndReason.STOPPING, "the hub is shutting down")

    async def wait_closed(self, timeout_s: float) -> None:
        """Until every connection has been closed (at most ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            await self._all_closed.wait()

    async def serve(self, websocket: WebSocket) -> None:
        """One connection, from the handshake to its close."""
        await websocket.accept()
        connection = _Connection(websocket, self)
        self.connections.add(connection)
        self._all_closed.clear()
        try:
            await connection.serve()
        finally:
            self.connections.discard(connection)
            if not self.connections:
                self._all_closed.set()


@dataclass(eq=False)
class _Connection:
    """One WebSocket: the :class:`~iothub.bridge.live.Outbox` of its session."""

    websocket: WebSocket
    ws: WsHub
    session: Session[bytes] | None = None
    watched: Watched | None = None
    _writer: WatchedWriter = field(default_factory=WatchedWriter)
    _prefixes: dict[str, bytes] = field(default_factory=dict)
    _end: End | None = None  # why the hub ends it before it has a session
    _authenticating: asyncio.Task[Any] | None = None

    async def serve(self) -> None:
        ws = self.ws
        if ws.closing.is_set():
            await self.close(End(EndReason.STOPPING, "the hub is shutting down"))
            return
        task = self._authenticating = asyncio.current_task()
        try:
            token = await self.authenticate()
        except _Refused as refused:
            await self.close(refused.end)
            return
        except WebSocketDisconnect:
            return
        except asyncio.CancelledError:
            if self._end is None or task is None:
                raise
            task.uncancel()  # ended by the hub while waiting for a token
            await self.close(self._end)
            return
        finally:
            self._authenticating = None
        if token is None:  # the client went before it sent a token
            return
        session = self.session = Session(ws.channel, ws.hub.commands, self, token, ws.session_limits)
        self.watched = self._writer.watched = Watched(token.id, self._ended_by_watchdog)
        ws.watchdog.watched.add(self.watched)
        end: End | None = None
        try:
            end = await session.run(self.frames(), parse)
        except* (WebSocketDisconnect, OSError):
            pass  # the client went while the hub was writing to it
        finally:
            ws.watchdog.watched.discard(self.watched)
        if end is not None:
            await self.close(end)

    async def authenticate(self) -> TokenRecord | None:
        """The connection's token record: from the handshake, else from a first ``auth`` frame."""
        websocket = self.websocket
        token = presented_token(websocket, query=True)
        greeted = token is None
        if token is None:
            try:
                async with asyncio.timeout(self.ws.settings.auth_timeout_s):
                    message = await websocket.receive()
            except TimeoutError:
                raise _Refused.unauthorized(
                    f"no token within {self.ws.settings.auth_timeout_s:g} s: send "
                    '{"type":"auth","token":"..."} first, or the token in Authorization or ?access_token='
                ) from None
            if message["type"] == "websocket.disconnect":
                return None
            try:
                first = parse(message.get("text") or message.get("bytes") or b"")
            except ProtocolError as exc:
                raise _Refused.unauthorized(f"authenticate first: {exc}") from None
            if not isinstance(first, Auth):
                raise _Refused.unauthorized(f"authenticate first: send 'auth' before {first.type!r}")
            token = first.token
        elif token == "":
            raise _Refused.unauthorized("malformed Authorization header: expected 'Bearer <token>'")
        try:
            record = await verify(self.ws.hub, token, Scope.READ)
        except BridgeError as exc:
            raise _Refused.unauthorized(str(exc)) from None
        if greeted:
            await self.reply(Authenticated(record.id, record.scope.value))
        return record

    async def frames(self) -> AsyncIterator[str | bytes]:
        receive = self.websocket.receive
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            yield text if text is not None else message.get("bytes") or b""

    # -- writes (the session's outbox) ---------------------------------------------------------

    async def deliver(self, subscription: str, delivery: Delivery[bytes]) -> None:
        prefix = self._prefixes.get(subscription)
        if prefix is None:
            prefix = self._prefixes[subscription] = b'{"type":"event","subscription":' + _json(subscription)
        frames = [prefix + frame for frame in delivery.frames]
        if delivery.gap is not None:
            frames.insert(0, _json({"type": "gap", "subscription": subscription, **delivery.gap.view()}))
        await self._write(frames)

    async def reply(self, reply: Reply) -> None:
        await self._write([_json(reply.view())])

    async def _write(self, frames: list[bytes]) -> None:
        async with self._writer.turn():
            await self._send_texts(frames)

    async def _send_texts(self, frames: list[bytes]) -> None:
        send_texts: Callable[[list[bytes]], Awaitable[None]] | None = self.websocket.scope["extensions"].get(SEND_TEXTS)
        if send_texts is not None:  # the hub's own server: one write for all of them
            await send_texts(frames)
            return
        for frame in frames:  # any other ASGI server
            await self.websocket.send({"type": "websocket.send", "text": frame.decode()})

    # -- ending --------------------------------------------------------------------------------

    def end(self, reason: EndReason, message: str) -> None:
        if self.session is not None:
            self.session.end(reason, message)
        elif self._end is None:
            self._end = End(reason, message)
            if self._authenticating is not None:
                self._authenticating.cancel()

    def _ended_by_watchdog(self, why: Ending) -> None:
        if why is Ending.REVOKED:
            token_id = self.watched.token_id if self.watched else None
            self.end(EndReason.UNAUTHORIZED, f"API token {token_id!r} has been revoked")
        else:
            if self.session is not None:
                self.session.kick(f"writes blocked for {self.ws.settings.send_timeout_s:g} s")
            self.abort()  # its writes are blocked: a close frame would not get through either

    async def close(self, end: End) -> None:
        """Close with the end's code and reason; cut the connection if that cannot be written."""
        code = CLOSE_CODES[end.reason]
        if end.reason is not EndReason.STOPPING:
            log.info("closing a WebSocket (%d): %s", code, end.message)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S), self._writer.lock:
                await self.websocket.close(code, _reason(end.message))
        except TimeoutError:
            self.abort()
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # gone already

    def abort(self) -> None:
        abort: Callable[[], None] | None = self.websocket.scope["extensions"].get(ABORT)
        if abort is not None:
            abort()


class _Refused(Exception):
    def __init__(self, end: End) -> None:
        super().__init__(end.message)
        self.end = end

    @classmethod
    def unauthorized(cls, message: str) -> _Refused:
        return cls(End(EndReason.UNAUTHORIZED, message))


async def endpoint(websocket: WebSocket) -> None:
    ws: WsHub = websocket.app.state.ws
    await ws.serve(websocket)


routes = [WebSocketRoute("/api/v1/ws", endpoint)]
