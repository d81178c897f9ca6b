"""Stopping the hub loses nothing: the broker closes, ingest drains and commits, and only then does the
fan-out end, so consumers get the events committed during the drain."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import aiomqtt

from iothub.hub.events import Gap, HubEvent
from iothub.runner import serve
from tests.conftest import WAIT_S, EventWaiter, hub_settings, lock_store, mqtt_client, unique_id


async def test_events_committed_while_ingest_drains_reach_consumers(tmp_path: Path) -> None:
    """The store is held while the hub stops, so the connected device's ``hub_stopped`` status can only
    be committed during the drain; the fan-out must still be open to hand it on."""
    settings = hub_settings(tmp_path / "data")
    device = unique_id()
    seen: list[HubEvent | Gap] = []

    async def consume(sub: EventWaiter, blocker: sqlite3.Connection) -> None:
        try:
            async with asyncio.timeout(1.0):  # the stream must not end while ingest still has work
                async for item in sub.sub:
                    seen.append(item)  # noqa: PERF401 - keep what came if the wait times out
                return  # ended with the store still held: what ingest commits next is lost
        except TimeoutError:
            pass
        finally:
            blocker.rollback()  # let ingest commit; the stream ends once it has drained
        async with asyncio.timeout(WAIT_S):
            seen.extend([item async for item in sub.sub])

    async with serve(settings) as running:
        waiter = EventWaiter(running.hub.bus.subscribe("drain"))
        client = mqtt_client(running, device)
        await client.__aenter__()
        await waiter.status_of(device, online=True)
        blocker = await lock_store(settings.data_dir / "iothub.db")
        consumer = asyncio.create_task(consume(waiter, blocker))
    async with asyncio.timeout(WAIT_S):
        await consumer
    blocker.close()
    with contextlib.suppress(aiomqtt.MqttError):
        await client.__aexit__(None, None, None)
    reasons = [e.data["reason"] for e in seen if isinstance(e, HubEvent) and e.device_id == device]
    assert reasons == ["hub_stopped"]
