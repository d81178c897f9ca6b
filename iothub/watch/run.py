"""``iothub watch``'s loop: print events until ``count`` have come, or fail when ``timeout_s`` ends first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

from iothub.watch.events import WatchTimeout

SHOWN_ON_TIMEOUT = 3  # events quoted in a timeout's message


class Shown(Protocol):
    """An event or a webhook delivery: what it is, and its readable line."""

    @property
    def type(self) -> str: ...

    def line(self) -> str: ...


E = TypeVar("E", bound=Shown)


async def watch(
    opened: AbstractAsyncContextManager[AsyncIterable[E]],
    emit: Callable[[E], None],
    *,
    count: int | None,
    timeout_s: float | None,
    waiting_for: str,
    on_ready: Callable[[], None] | None = None,
) -> list[E]:
    """Emit each event as it comes; return after ``count`` events (gaps are shown, not counted).

    ``timeout_s`` bounds the whole watch, connecting included. Without ``count`` it is how long to
    watch, and ending then is no failure; with ``count``, :class:`WatchTimeout` says what was waited
    for (``waiting_for``) and what came. ``on_ready`` is called once subscribed (or listening).
    """
    seen: list[E] = []
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            async with opened as events:
                if on_ready is not None:
                    on_ready()
                async for event in events:
                    emit(event)
                    if event.type != "gap":
                        seen.append(event)
                    if count is not None and len(seen) >= count:
                        break
    except TimeoutError:
        if count is None:
            return seen
        raise WatchTimeout(timeout_message(timeout_s or 0, count, waiting_for, seen)) from None
    return seen


def timeout_message(timeout_s: float, count: int, waiting_for: str, seen: list[E]) -> str:
    noun = "event" if count == 1 else "events"
    message = f"waited {timeout_s:g} s for {count} {noun} matching {waiting_for}; saw {len(seen)}"
    if seen:
        shown = seen[-SHOWN_ON_TIMEOUT:]
        more = f" (the last {len(shown)})" if len(seen) > len(shown) else ""
        message += f"{more}: " + "; ".join(e.line() for e in shown)
    return message
