"""The SSE channel: ``GET /api/v1/stream`` with the selection as query parameters (httpx).

Entering returns once the hub has sent ``retry:``, which it does after attaching the stream to its
fan-out: from then on nothing published is missed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from iothub.watch.events import Selection, Target, WatchError, WatchEvent
from iothub.watch.http import hub_error, unreachable


def _params(selection: Selection) -> httpx.QueryParams:
    params: list[tuple[str, str | int | float | bool | None]] = [("label", label) for label in selection.labels]
    for name, values in (("devices", selection.devices), ("metrics", selection.metrics), ("types", selection.types)):
        if values:
            params.append((name, ",".join(values)))
    if selection.resume_from is not None:
        params.append(("last_event_id", str(selection.resume_from)))
    return httpx.QueryParams(params)


async def _frames(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str, str | None]]:
    """``(event, data, id)`` of each frame; ``retry:`` as ``("retry", value, None)``; comments skipped."""
    fields: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if "data" in fields:
                yield fields.get("event", "message"), fields["data"], fields.get("id")
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "retry":
            yield "retry", value, None
        else:
            fields[name] = value
    raise WatchError("the hub ended the SSE stream")


def to_event(kind: str, data: str, event_id: str | None) -> WatchEvent:
    """The event of a frame; its id is the frame's ``id:`` (a command result's ``data`` has an ``id``
    of its own, the request id)."""
    body = json.loads(data)
    if kind == "gap":
        return WatchEvent("gap", "", None, body, None, "sse")
    if kind == "error":
        raise WatchError(f"the hub ended the SSE stream: {body.get('error', data)}")
    number = int(event_id) if event_id is not None and event_id.isdigit() else None
    return WatchEvent(kind, body.get("device_id", ""), body.get("ts"), body, number, "sse")


@asynccontextmanager
async def open_sse(target: Target, selection: Selection) -> AsyncIterator[AsyncIterator[WatchEvent]]:
    selection.check()
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    timeout = httpx.Timeout(target.connect_timeout_s, read=None)
    url = target.base + "/api/v1/stream"
    async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:
        try:
            async with client.stream("GET", url, params=_params(selection)) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise hub_error(url, response)
                frames = _frames(response.aiter_lines())
                try:
                    async with asyncio.timeout(target.connect_timeout_s):
                        first = await anext(frames)
                except TimeoutError:
                    raise WatchError(f"{url}: no stream began in {target.connect_timeout_s:g} s") from None
                if first[0] != "retry":  # the hub always starts with retry:, sent once attached
                    raise WatchError(f"{url}: not an iothub stream (it began with {first[0]!r})")

                async def events() -> AsyncIterator[WatchEvent]:
                    async for kind, data, event_id in frames:
                        if kind != "retry":
                            yield to_event(kind, data, event_id)

                yield events()
        except httpx.TransportError as exc:
            raise unreachable(url, exc) from None
