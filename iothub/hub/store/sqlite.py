"""SQLite store: the embedded default.

One writer thread commits batches (WAL, ``synchronous=NORMAL``: a commit does not wait for the
disk); readers use their own connections on a small pool, so queries never wait behind a write. The
WAL is checkpointed into the database (the one step that waits for the disk) by a thread and
connection of its own, at most every ``CHECKPOINT_S``, so a slow disk never holds up a commit, nor
the acknowledgements waiting for it (durable ack).

Several hub processes may share one database
(external-broker mode): each batch takes the write lock first (``BEGIN IMMEDIATE``) and numbers its
events after the newest id in the table, so ids stay unique and commit-ordered across processes.
With ``shared=True`` the writers of those processes also queue on an advisory file lock
(``iothub.db.writers``) before that, so one mostly waits in short sleeps (1 ms doubling to 20 ms)
instead of SQLite's coarser busy-wait ones; JSON is encoded before either lock is taken. Neither
wait is endless: a writer that cannot have the file lock within ``busy_timeout_s`` (5 s, as SQLite's
busy timeout) fails the batch with :class:`StoreError`, which ingest retries, so a hung process
cannot hang the others or their shutdown.
Layout:

* ``series(id, device_id, metric, kind)``: one row per device metric (``kind``: number, bool, string)
* ``points(series_id, ts, num, txt)`` indexed by ``(series_id, ts, num)``: by device, metric and time;
  the index holds the value too, so numeric aggregates never read the table
* ``events(id, ts, type, device_id, data)``: every event the hub emitted, for resume; pruned to
  ``retention`` rows
* ``devices(id, state)``: the per-device counters and presence, as JSON
* the webhook outbox and alert history (:mod:`iothub.hub.outbox`), written in the same transaction
  as the presence change or alert transition they come from
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from iothub.hub import outbox
from iothub.hub.errors import StoreError
from iothub.hub.events import EventType, HubEvent
from iothub.hub.store import sqlite_reads as reads
from iothub.hub.store.base import Agg, Batch, Series, StoredDevice, Value
from iothub.hub.store.writers_lock import WritersLock

T = TypeVar("T")
log = logging.getLogger(__name__)
CHECKPOINT_S = 1.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    kind TEXT NOT NULL,
    UNIQUE (device_id, metric)
);
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    num REAL,
    txt TEXT
);
CREATE INDEX IF NOT EXISTS points_by_series_ts_num ON points (series_id, ts, num);
DROP INDEX IF EXISTS points_by_series_ts;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    type TEXT NOT NULL,
    device_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
"""


def _kind(value: Value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    return "number"


BUSY_TIMEOUT_S = 5.0  # the longest a write waits for another writer (SQLite's lock, the writers' file lock)


class SqliteStore:
    def __init__(
        self,
        path: Path,
        retention: int = 1_000_000,
        shared: bool = False,
        on_outbox: Callable[[], None] | None = None,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.shared = shared
        self._writers = WritersLock(Path(f"{path}.writers"), busy_timeout_s) if shared else None
        self.retention = retention
        self.on_outbox = on_outbox  # called (on the event loop) after a write that queued webhook deliveries
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="iothub-store-writer")
        self._reader_pool = ThreadPoolExecutor(2, thread_name_prefix="iothub-store-reader")
        self._checkpoint_pool = ThreadPoolExecutor(1, thread_name_prefix="iothub-store-checkpoint")
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint: asyncio.Future[None] | None = None
        self._checkpoint_at = 0.0
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._series: dict[tuple[str, str], tuple[int, str]] = {}
        self._series_undo: dict[tuple[str, str], tuple[int, str] | None] = {}  # cache before this batch
        self._prune_at = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._in_writer(self._open_writer)

    async def close(self) -> None:
        if self._checkpoint is not None:
            await asyncio.wait([self._checkpoint])  # its failure, if any, was logged
        self._checkpoint_pool.shutdown(wait=True)
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._writer is not None:
            await self._in_writer(self._writer.close)
            self._writer = None
        if self._writers is not None:
            self._writers.close()
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
        for conn in self._readers:
            conn.close()
        self._readers.clear()

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        return conn

    def _open_writer(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # see _checkpoint_wal
            conn.executescript(SCHEMA)
            conn.executescript(outbox.SCHEMA)
            if self._writers is not None:
                self._writers.open()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the SQLite store at {self.path}: {exc}") from exc
        self._writer = conn
        for sid, device_id, metric, kind in conn.execute("SELECT id, device_id, metric, kind FROM series"):
            self._series[(device_id, metric)] = (sid, kind)
        (last_id,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        self._prune_at = last_id + 1 + self.retention // 10

    async def _in_writer(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, fn)

    async def _in_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connect()
                self._readers.append(conn)
            return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, run)

    # -- writes ----------------------------------------------------------------------------------

    async def write(self, batch: Batch) -> list[HubEvent]:
        events, queued = await self._in_writer(lambda: self._write(batch))
        if queued and self.on_outbox is not None:
            self.on_outbox()
        loop = asyncio.get_running_loop()
        if self._checkpoint is None and loop.time() >= self._checkpoint_at:
            self._checkpoint_at = loop.time() + CHECKPOINT_S
            self._checkpoint = loop.run_in_executor(self._checkpoint_pool, self._checkpoint_wal)
            self._checkpoint.add_done_callback(self._checkpointed)
        return events

    def _checkpoint_wal(self) -> None:
        """Copy what the WAL holds into the database, without waiting for readers or the writer."""
        if self._checkpointer is None:
            self._checkpointer = self._connect()
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpoint = None
        if not done.cancelled() and done.exception() is not None:
            log.warning(
                "WAL checkpoint of %s failed (tried again in %g s): %s", self.path, CHECKPOINT_S, done.exception()
            )

    def _write(self, batch: Batch) -> tuple[list[HubEvent], int]:
        """Commit ``batch``; its events, and how many webhook deliveries it queued."""
        conn = self._writer
        if conn is None:
            raise StoreError("the store is closed")
        self._series_undo.clear()
        data = [json.dumps(e.data) for e in batch.events]
        devices = [(device_id, json.dumps(state)) for device_id, state in batch.devices.items()]
        try:
            turn = self._writers.turn() if self._writers is not None else contextlib.nullcontext()
            with turn:
                return self._commit(conn, batch, data, devices)
        except TimeoutError as exc:  # the writers' lock: another process hangs, or is very slow
            raise StoreError(f"cannot write to the SQLite store at {self.path}: {exc}") from None

    def _commit(
        self, conn: sqlite3.Connection, batch: Batch, data: list[str], devices: list[tuple[str, str]]
    ) -> tuple[list[HubEvent], int]:
        try:
            conn.execute("BEGIN IMMEDIATE")  # the write lock first: another process may number events too
            rows: list[tuple[int, int, float | None, str | None]] = []
            for p in batch.points:
                sid = self._series_id(conn, p.device_id, p.metric, _kind(p.value))
                if isinstance(p.value, str):
                    rows.append((sid, p.ts, None, p.value))
                else:
                    rows.append((sid, p.ts, float(p.value), None))
            conn.executemany("INSERT INTO points (series_id, ts, num, txt) VALUES (?, ?, ?, ?)", rows)
            (newest,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
            first = newest + 1
            events = [
                HubEvent(first + i, EventType(e.type), e.ts, e.device_id, e.data) for i, e in enumerate(batch.events)
            ]
            conn.executemany(
                "INSERT INTO events (id, ts, type, device_id, data) VALUES (?, ?, ?, ?, ?)",
                [(e.id, e.ts, e.type.value, e.device_id, d) for e, d in zip(events, data, strict=True)],
            )
            queued = outbox.record(conn, events, time.time_ns() // 1_000_000)
            conn.executemany(
                "INSERT INTO devices (id, state) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                devices,
            )
            next_id = first + len(events)
            if next_id >= self._prune_at:
                conn.execute("DELETE FROM events WHERE id < ?", (next_id - self.retention,))
                self._prune_at = next_id + self.retention // 10
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for key, before in self._series_undo.items():
                if before is None:
                    self._series.pop(key, None)
                else:
                    self._series[key] = before
            raise StoreError(f"cannot write to the SQLite store at {self.path}: {exc}") from exc
        return events, queued

    def _series_id(self, conn: sqlite3.Connection, device_id: str, metric: str, kind: str) -> int:
        known = self._series.get((device_id, metric))
        if known is not None:
            sid, known_kind = known
            if known_kind != kind:
                self._series_undo.setdefault((device_id, metric), known)
                conn.execute("UPDATE series SET kind = ? WHERE id = ?", (kind, sid))
                self._series[(device_id, metric)] = (sid, kind)
            return sid
        # Another process sharing the database may have made this series since we looked.
        conn.execute(
            "INSERT INTO series (device_id, metric, kind) VALUES (?, ?, ?) ON CONFLICT (device_id, metric) DO NOTHING",
            (device_id, metric, kind),
        )
        sid, stored_kind = conn.execute(
            "SELECT id, kind FROM series WHERE device_id = ? AND metric = ?", (device_id, metric)
        ).fetchone()
        if stored_kind != kind:
            conn.execute("UPDATE series SET kind = ? WHERE id = ?", (kind, sid))
        self._series_undo.setdefault((device_id, metric), None)
        self._series[(device_id, metric)] = (int(sid), kind)
        return int(sid)

    # -- reads (the SQL is in sqlite_reads) -------------------------------------------------------

    async def load_devices(self) -> list[StoredDevice]:
        return await self._in_reader(reads.load_devices)

    async def metrics_of(self, device_id: str) -> list[str]:
        return await self._in_reader(partial(reads.metrics_of, device_id=device_id))

    async def query(
        self,
        device_id: str,
        metrics: list[str],
        start_ms: int,
        end_ms: int,
        step_ms: int | None,
        agg: Agg,
        limit: int,
    ) -> list[Series]:
        return await self._in_reader(
            partial(reads.query, device_id=device_id, metrics=metrics, start_ms=start_ms, end_ms=end_ms,
                    step_ms=step_ms, agg=agg, limit=limit)
        )  # fmt: skip

    async def events_after(self, after_id: int, limit: int) -> list[HubEvent]:
        return await self._in_reader(partial(reads.events_after, after_id=after_id, limit=limit))

    async def event_bounds(self) -> tuple[int, int]:
        return await self._in_reader(reads.event_bounds)

    async def stats(self) -> dict[str, Any]:
        return await self._in_reader(reads.stats)
