"""WatchedWriter: the watchdog sees a write as in progress from the moment one waits for its turn."""

from __future__ import annotations

import asyncio

from iothub.bridge.watchdog import Watched, WatchedWriter
from tests.conftest import WAIT_S


async def test_a_write_is_watched_from_its_wait_for_a_turn_until_the_last_one_ends() -> None:
    watched = Watched("token", lambda why: None)
    writer = WatchedWriter(watched)
    release = asyncio.Event()
    holding = asyncio.Event()
    order: list[str] = []

    async def write(name: str, block: bool) -> None:
        async with writer.turn():
            order.append(name)
            if block:
                holding.set()
                await release.wait()

    async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tasks:
        assert watched.sending_since is None
        tasks.create_task(write("first", block=True))
        await holding.wait()
        started = watched.sending_since
        assert started is not None  # the first write is in progress
        tasks.create_task(write("second", block=False))
        assert watched.sending_since == started  # a second writer does not reset the clock
        release.set()
    assert order == ["first", "second"]  # one at a time, in turn
    assert watched.sending_since is None  # nothing waits or writes
