"""Every channel behind one interface: ``open_channel(name, target, selection)``.

Each is an async context manager that connects and subscribes, then gives an async iterator of
:class:`~iothub.watch.events.WatchEvent`; once entered, the hub routes events to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from iothub.watch.events import Selection, Target, WatchError, WatchEvent
from iothub.watch.grpc_channel import open_grpc
from iothub.watch.mqtt import open_mqtt
from iothub.watch.sse import open_sse
from iothub.watch.ws import open_ws

Opener = Callable[[Target, Selection], AbstractAsyncContextManager[AsyncIterator[WatchEvent]]]
CHANNELS: dict[str, Opener] = {"mqtt": open_mqtt, "sse": open_sse, "ws": open_ws, "grpc": open_grpc}


def open_channel(
    name: str, target: Target, selection: Selection
) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]:
    try:
        opener = CHANNELS[name]
    except KeyError:
        raise WatchError(f"no channel {name!r}: one of {', '.join(CHANNELS)}") from None
    return opener(target, selection)
