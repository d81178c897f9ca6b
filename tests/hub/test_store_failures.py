"""When the store fails: the SQLite store rolls a failed write back and stays usable; ingest retries
with backoff, holds the acknowledgements of what it could not commit, and still lets the hub stop; a
failed save of the broker's sessions is tried again while the hub serves on.

The failure is real: a trigger, added from another connection, makes SQLite refuse every new row of
a table (as a full or failing disk would refuse the write), and dropping it ends the failure.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import aiomqtt
import pytest

from iothub.hub.errors import StoreError
from iothub.hub.events import EventType
from iothub.hub.store import Agg, Batch, Point, SqliteStore
from iothub.hub.store.base import PendingEvent
from iothub.runner import Running, serve
from tests.conftest import WAIT_S, EventWaiter, device_secret, hub_settings, telemetry, unique_id
from tests.mqtt_raw import publish_packet, raw_connect, read_packet

PINGREQ = bytes([0xC0, 0])
PUBACK, PINGRESP = 4, 13
FAILURE = "the disk refuses"


def _ddl(path: Path, statement: str) -> None:
    db = sqlite3.connect(path, timeout=WAIT_S)  # the hub's writer holds the lock while it commits
    try:
        db.execute(statement)
    finally:
        db.close()


@asynccontextmanager
async def failing_writes(path: Path, table: str = "events") -> AsyncIterator[None]:
    """Every write to ``table`` of the SQLite database at ``path`` fails until exit."""
    trigger = f"CREATE TRIGGER refuse BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, '{FAILURE}'); END"
    await asyncio.to_thread(_ddl, path, trigger)
    try:
        yield
    finally:
        await asyncio.to_thread(_ddl, path, "DROP TRIGGER refuse")


class LogWaiter(logging.Handler):
    """The messages a logger emits, and a bounded wait for them (they are emitted on the event loop)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._changed.set()

    def matching(self, pattern: str) -> list[re.Match[str]]:
        return [m for m in map(re.compile(pattern).search, self.messages) if m is not None]

    async def until(self, done: Callable[[LogWaiter], bool], within: float = WAIT_S) -> None:
        async with asyncio.timeout(within):
            while not done(self):
                self._changed.clear()
                await self._changed.wait()


@contextmanager
def watching(logger: str) -> Iterator[LogWaiter]:
    waiter = LogWaiter()
    logging.getLogger(logger).addHandler(waiter)
    try:
        yield waiter
    finally:
        logging.getLogger(logger).removeHandler(waiter)


RETRY = r"store write failed, retrying in ([0-9.]+) s: cannot write to the SQLite store at .*: " + FAILURE


# -- the SQLite store ------------------------------------------------------------------------------


def batch(device: str, **metrics: bool | float) -> Batch:
    points = [Point(device, name, 1_000, value) for name, value in metrics.items()]
    event = PendingEvent(EventType.TELEMETRY.value, 1_000, device, {"metrics": metrics})
    return Batch(points, [event], {device: {"messages": 1}})


async def test_a_failed_write_is_rolled_back_and_the_store_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "iothub.db"
    async with SqliteStore(path) as store:
        await store.write(batch("d1", on=True))  # a bool series
        async with failing_writes(path):
            with pytest.raises(StoreError, match=re.escape(f"cannot write to the SQLite store at {path}: {FAILURE}")):
                await store.write(batch("d1", on=5.0, t=21.5))  # a new series, and "on" turned number
            assert await store.metrics_of("d1") == ["on"]  # nothing of the failed batch was kept
            assert await store.event_bounds() == (1, 1)
        events = await store.write(batch("d1", on=7.0, t=21.5))  # the same store, once writes work again
        assert [e.id for e in events] == [2]  # no event id was used up by the failure
        series = await store.query("d1", ["on", "t"], 0, 2_000, None, Agg.LAST, 10)
        assert [s.points for s in series] == [[(1_000, True), (1_000, 7)], [(1_000, 21.5)]]
        assert [e.id for e in await store.events_after(0, 10)] == [1, 2]


async def test_a_writers_lock_held_too_long_fails_the_write_within_the_busy_timeout(tmp_path: Path) -> None:
    """Shared mode: a process hung while holding the writers' lock does not hang this one."""
    path = tmp_path / "iothub.db"
    async with SqliteStore(path, shared=True, busy_timeout_s=0.3) as store:
        await store.write(batch("d1", t=1.0))
        with Path(f"{path}.writers").open("ab") as held:  # noqa: ASYNC230 (a local file, opened at once)
            fcntl.flock(held, fcntl.LOCK_EX)  # another process's writer, hung
            try:
                expected = re.escape(f"cannot write to the SQLite store at {path}: another process has held the ")
                with pytest.raises(StoreError, match=expected):
                    async with asyncio.timeout(WAIT_S):
                        await store.write(batch("d1", t=2.0))
            finally:
                fcntl.flock(held, fcntl.LOCK_UN)
        events = await store.write(batch("d1", t=3.0))  # the lock is free again: writes go on
        assert [e.id for e in events] == [2]


# -- ingest ----------------------------------------------------------------------------------------


async def connected_device(
    running: Running, waiter: EventWaiter
) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """A device connected by hand, its presence committed (so ingest has nothing else to do)."""
    device = unique_id()
    secret = device_secret(running, device)
    reader, writer, ack = await raw_connect(running.ports["mqtt"], device, username=device, password=secret)
    assert ack.body[1] == 0
    await waiter.status_of(device, online=True)
    return device, reader, writer


async def stored(running: Running, device: str) -> list[object]:
    series = await running.hub.store.query(device, ["t"], 0, 2**62, None, Agg.LAST, 10)
    return [value for _, value in series[0].points]


async def test_while_the_store_fails_ingest_retries_with_backoff_and_holds_the_puback(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path / "data", mqtt={"ws_port": None})
    database = settings.data_dir / "iothub.db"
    async with serve(settings) as running:
        waiter = EventWaiter(running.hub.bus.subscribe("t"))
        device, reader, writer = await connected_device(running, waiter)
        with watching("iothub.hub.ingest") as log:
            async with failing_writes(database):
                writer.write(publish_packet(f"devices/{device}/telemetry", telemetry({"t": 1.5}), qos=1, packet_id=1))
                await log.until(lambda log: len(log.matching(RETRY)) >= 4)
                assert [float(m[1]) for m in log.matching(RETRY)[:4]] == [0.1, 0.2, 0.4, 0.8]  # backing off
                writer.write(PINGREQ)  # answered at once, after any PUBACK already sent
                assert (await read_packet(reader)).kind == PINGRESP  # no PUBACK: the message is not committed
                assert await stored(running, device) == []
            puback = await read_packet(reader, within=WAIT_S)  # the store works again: the retry commits
            assert (puback.kind, puback.packet_id) == (PUBACK, 1)
            assert await stored(running, device) == [1.5]  # acknowledged once stored, not before
            event = await waiter.telemetry_from(device)
        assert event.data["metrics"] == {"t": 1.5}
        assert not log.matching("giving up")
        writer.close()


async def test_a_hub_whose_store_fails_still_stops_and_acknowledges_nothing_it_lost(tmp_path: Path) -> None:
    """At shutdown ingest gives up on a batch after a few retries rather than hang the stop; the QoS 1
    message in it was never acknowledged, so its sender still has it to send again."""
    settings = hub_settings(tmp_path / "data", mqtt={"ws_port": None})
    database = settings.data_dir / "iothub.db"
    with watching("iothub.hub.ingest") as log:
        # the failure outlives the hub; the stop must end before the timeout, set once the test is done
        async with AsyncExitStack() as failure, asyncio.timeout(None) as stopping, serve(settings) as running:
            waiter = EventWaiter(running.hub.bus.subscribe("t"))
            device, reader, writer = await connected_device(running, waiter)
            await failure.enter_async_context(failing_writes(database))
            topic = f"devices/{device}/telemetry"
            writer.write(publish_packet(topic, telemetry({"t": 2.5}), qos=1, packet_id=1))
            await log.until(lambda log: bool(log.matching(RETRY)))
            stopping.reschedule(asyncio.get_running_loop().time() + WAIT_S)  # the hub stops within this
    assert log.matching(r"giving up on a batch of 1 points at shutdown: .*" + FAILURE)
    async with asyncio.timeout(WAIT_S):
        assert await reader.read() == b""  # closed, and no PUBACK came for what was not stored
    writer.close()
    async with serve(settings) as running:
        assert await stored(running, device) == []


# -- the broker's saved state ----------------------------------------------------------------------


async def retained_on(running: Running, topic_filter: str) -> bytes:
    async with aiomqtt.Client("127.0.0.1", running.ports["mqtt"]) as client:
        await client.subscribe(topic_filter, qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(client.messages))
    assert message.retain
    assert isinstance(message.payload, bytes)
    return message.payload


async def test_a_failed_checkpoint_is_tried_again_and_the_hub_serves_on(tmp_path: Path) -> None:
    """The broker's sessions and retained messages are a checkpoint: failing to save them is logged and
    retried, never a reason to stop serving, and the file keeps the last save that worked."""
    settings = hub_settings(tmp_path / "data", mqtt={"ws_port": None, "allow_anonymous": True, "checkpoint_s": 0.1})
    state = settings.data_dir / "broker.db"
    failed = r"cannot save the broker state to .*broker\.db: " + FAILURE
    with watching("iothub.hub.embedded") as log:
        async with serve(settings) as running:
            async with failing_writes(state, "retained"):
                await running.hub.publish("plant/state", b"saved late", retain=True)
                await log.until(lambda log: len(log.matching(failed + "; trying again in 0.1 s")) >= 2)
            assert await retained_on(running, "plant/#") == b"saved late"  # the broker serves on
        async with AsyncExitStack() as failure, serve(settings) as running:  # the failure outlives this hub
            assert await retained_on(running, "plant/#") == b"saved late"  # saved once writes worked again
            await failure.enter_async_context(failing_writes(state, "retained"))
            await running.hub.publish("plant/state", b"never saved", retain=True)
        assert log.matching(failed + "; the next start restores what the last checkpoint saved")
    async with serve(settings) as running:
        assert await retained_on(running, "plant/#") == b"saved late"
