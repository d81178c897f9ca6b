"""uvicorn's WebSocket protocol (its ``websockets`` implementation), with two additions that the
WebSocket bridge finds in a connection's ASGI scope extensions. The one module that touches
uvicorn's WebSocket internals (uvicorn 0.30+, ``websockets_sansio_impl``).

- :data:`ABORT`: cut the connection at once. ASGI's close has to write a close frame, which a
  client that stopped reading never lets through, and closing a transport waits for its buffer.
- :data:`SEND_TEXTS`: write several text frames (UTF-8 bytes) with one call. An ASGI send per
  frame costs an await, two dict messages and a write call each; a live channel sends whatever is
  queued for a client at once, as the SSE stream does.
"""

from __future__ import annotations

from collections.abc import Iterable

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

ABORT = "iothub.abort"
SEND_TEXTS = "iothub.send_texts"


class HubWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if hasattr(self, "scope"):  # the handshake was accepted
            extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[ABORT] = self.transport.abort
            extensions[SEND_TEXTS] = self.send_texts

    async def send_texts(self, frames: Iterable[bytes]) -> None:
        """Write ``frames`` as text frames in one go; :class:`ClientDisconnected` once it is gone."""
        await self.writable.wait()
        if self.disconnected or self.close_sent:
            raise ClientDisconnected
        conn = self.conn
        try:
            for frame in frames:
                conn.send_text(frame)
        except InvalidState:
            raise ClientDisconnected from None
        self.transport.write(b"".join(conn.data_to_send()))
