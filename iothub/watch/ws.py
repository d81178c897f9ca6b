"""The WebSocket channel: ``/api/v1/ws``, one subscription with the selection (``websockets``).

Entering returns once the hub has answered ``subscribed``: its events are routed from then on. A
refused subscription (a bad filter, ``resume_from`` ahead of the hub) or token (close 4401) is a
:class:`WatchError` with the hub's own message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from iothub.watch.events import Selection, Target, WatchError, WatchEvent
from iothub.watch.http import unreachable

SUBSCRIPTION = "watch"


def subscribe_frame(selection: Selection) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "subscribe", "id": SUBSCRIPTION}
    for name in ("devices", "labels", "metrics", "types"):
        values = getattr(selection, name)
        if values:
            frame[name] = list(values)
    if selection.resume_from is not None:
        frame["resume_from"] = selection.resume_from
    return frame


def _closed(url: str, exc: ConnectionClosed) -> WatchError:
    if exc.rcvd is None:
        return WatchError(f"{url}: the connection was lost")
    reason = f": {exc.rcvd.reason}" if exc.rcvd.reason else ""
    return WatchError(f"{url}: the hub closed the connection ({exc.rcvd.code}){reason}")


async def _receive(connection: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await connection.recv())
    return frame


def to_event(frame: dict[str, Any]) -> WatchEvent | None:
    """The event a frame carries; None for frames that carry none (answers to other requests)."""
    if frame.get("type") == "event":
        data = frame["data"]
        return WatchEvent(frame["event"], data.get("device_id", ""), data.get("ts"), data, frame["id"], "ws")
    if frame.get("type") == "gap":
        body = {k: v for k, v in frame.items() if k not in ("type", "subscription")}
        return WatchEvent("gap", "", None, body, None, "ws")
    return None


@asynccontextmanager
async def open_ws(target: Target, selection: Selection) -> AsyncIterator[AsyncIterator[WatchEvent]]:
    selection.check()
    url = target.ws_url
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else None
    try:
        async with asyncio.timeout(target.connect_timeout_s):
            connection = await connect(url, additional_headers=headers, open_timeout=None)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise unreachable(url, exc) from None
    try:
        await _subscribe(connection, url, selection, target.connect_timeout_s)

        async def events() -> AsyncIterator[WatchEvent]:
            while True:
                event = to_event(await _receive(connection))
                if event is not None:
                    yield event

        yield events()
    except ConnectionClosed as exc:
        raise _closed(url, exc) from None
    finally:
        async with asyncio.timeout(target.connect_timeout_s):
            await connection.close()


async def _subscribe(connection: ClientConnection, url: str, selection: Selection, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await connection.send(json.dumps(subscribe_frame(selection)))
            answer = await _receive(connection)
    except TimeoutError:
        raise WatchError(f"{url}: no answer to the subscription in {timeout_s:g} s") from None
    if answer.get("type") == "error":
        raise WatchError(f"{url}: {answer.get('code')}: {answer.get('message')}")
    if answer != {"type": "subscribed", "subscription": SUBSCRIPTION}:
        raise WatchError(f"{url}: expected 'subscribed', got {json.dumps(answer)[:200]}")
