"""The webhook outbox: durable rows in the store's SQLite file (``iothub.db``), one per message and
endpoint, written by :func:`record` inside the store's own transaction.

A presence change or an alert transition is committed by :meth:`SqliteStore.write` in one
transaction with its event row, its alert history row and its outbox rows: either all of them are
on disk or none is, so a message is never lost between the change and its delivery, whatever kills
the hub. The delivery side (:class:`~iothub.hub.deliveries.Deliveries`) moves each row through::

    pending ──claim──▶ sending ──2xx──▶ delivered
       ▲                  │
       └──── retry ◀──────┤ (failure, attempts left; 410 disables the endpoint and keeps it pending)
                          └──── last attempt failed ──▶ dead   (redeliver puts it back to pending)

``attempts`` counts every attempt ever made (the attempt log keeps them all); ``schedule_from`` is
how many were made before the current retry schedule began (a redelivery starts a fresh one).

A row left ``sending`` by a killed hub is ``pending`` again at the next start: at least once.

Tables (besides the store's): ``webhook_endpoints``, ``webhook_outbox``, ``webhook_attempts`` (one row
per attempt: status, latency, response snippet), ``alert_rules`` (rules added over REST or the CLI)
and ``alert_history`` (every alert transition). :func:`prune` keeps them from growing forever.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iothub.hub.events import EventType, HubEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_until INTEGER,
    enabled INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    created INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    schedule_from INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (state, next_at);
CREATE INDEX IF NOT EXISTS webhook_outbox_endpoint ON webhook_outbox (endpoint_id, id);
CREATE INDEX IF NOT EXISTS webhook_outbox_updated ON webhook_outbox (updated);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    status INTEGER,
    latency_ms REAL NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
CREATE INDEX IF NOT EXISTS webhook_attempts_ts ON webhook_attempts (ts);
CREATE TABLE IF NOT EXISTS alert_rules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_history (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    rule TEXT NOT NULL,
    device_id TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_history_by_rule_device ON alert_history (rule, device_id, id);
CREATE INDEX IF NOT EXISTS alert_history_ts ON alert_history (ts);
"""

EVENT_TYPES = ("alert.firing", "alert.resolved", "device.online", "device.offline")
"""The webhook event types an endpoint may subscribe to."""


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_type(event: HubEvent) -> str | None:
    """The webhook event type of a hub event, or None for events that are not sent out."""
    if event.type is EventType.STATUS:
        return "device.online" if event.data.get("online") else "device.offline"
    if event.type is EventType.ALERT:
        return f"alert.{event.data['state']}"
    return None


def webhook_body(kind: str, event: HubEvent) -> str:
    """The JSON a receiver gets: ``{"type", "timestamp", "data": {...}}`` (documented in docs/webhooks.md)."""
    data: dict[str, Any] = {"event_id": event.id, "device_id": event.device_id, **event.data}
    return json.dumps({"type": kind, "timestamp": iso_ms(event.ts), "data": data}, separators=(",", ":"))


def record(conn: sqlite3.Connection, events: Iterable[HubEvent], now_ms: int) -> int:
    """Inside the caller's transaction: alert history rows, and an outbox row for every event and
    every enabled endpoint subscribed to its type; returns how many outbox rows it wrote."""
    history = []
    outgoing = []
    for event in events:
        if event.type is EventType.ALERT:
            data = event.data
            history.append((event.id, event.ts, data["rule"], event.device_id, data["state"], json.dumps(data)))
        kind = webhook_type(event)
        if kind is not None:
            outgoing.append((kind, event))
    if history:
        conn.executemany(
            "INSERT INTO alert_history (event_id, ts, rule, device_id, state, data) VALUES (?, ?, ?, ?, ?, ?)", history
        )
    if not outgoing:
        return 0
    enabled = conn.execute("SELECT id, events FROM webhook_endpoints WHERE enabled = 1")
    endpoints = [(endpoint_id, set(json.loads(types))) for endpoint_id, types in enabled]
    rows: list[tuple[str, str, str, str, int, int, int]] = []
    for kind, event in outgoing:
        wanted = [i for i, types in endpoints if kind in types]
        if not wanted:
            continue
        msg_id = "msg_" + secrets.token_hex(12)
        body = webhook_body(kind, event)
        rows.extend((msg_id, i, kind, body, now_ms, now_ms, now_ms) for i in wanted)
    conn.executemany(
        "INSERT INTO webhook_outbox (msg_id, endpoint_id, type, body, created, next_at, updated)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


_PRUNE = (
    "DELETE FROM webhook_attempts WHERE id IN (SELECT id FROM webhook_attempts WHERE ts < ? ORDER BY ts LIMIT ?)",
    "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox"
    " WHERE updated < ? AND state IN ('delivered', 'dead') ORDER BY updated LIMIT ?)",
    # the last transition of an alert still firing stays: a restart restores it from there
    "DELETE FROM alert_history WHERE id IN (SELECT h.id FROM alert_history h WHERE h.ts < ? AND (h.state != 'firing'"
    " OR EXISTS (SELECT 1 FROM alert_history n WHERE n.rule = h.rule AND n.device_id = h.device_id AND n.id > h.id))"
    " ORDER BY h.ts LIMIT ?)",
)


def prune(conn: sqlite3.Connection, webhooks_before_ms: int, alerts_before_ms: int, limit: int) -> int:
    """Delete up to ``limit`` rows of each table that are past retention: attempts made before
    ``webhooks_before_ms``, delivered or dead deliveries last changed before it, and alert history
    before ``alerts_before_ms``; returns the most rows deleted from one table (``limit``: call again)."""
    most = 0
    for sql, before in zip(_PRUNE, (webhooks_before_ms, webhooks_before_ms, alerts_before_ms), strict=True):
        most = max(most, conn.execute(sql, (before, limit)).rowcount)  # a transaction of its own
    return most


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (the write lock at once, waiting up to ``busy_timeout``), then ``COMMIT``,
    or ``ROLLBACK`` when the block raises; for connections of :func:`connect` (autocommit)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def connect(path: Path) -> sqlite3.Connection:
    """A connection of our own to the store's file (autocommit; transactions are explicit), with the
    outbox tables in place: for the delivery worker, and for the CLI on a hub's data dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # as the store: a commit survives the process, kill -9 included
    conn.executescript(SCHEMA)
    columns = {name for _, name, *_ in conn.execute("PRAGMA table_info(webhook_outbox)")}
    if "schedule_from" not in columns:  # a file of an earlier version
        conn.execute("ALTER TABLE webhook_outbox ADD COLUMN schedule_from INTEGER NOT NULL DEFAULT 0")
    return conn


class OutboxDb:
    """A lazily opened connection of :func:`connect` and the lock its users take around each use
    (the store's file is shared with the REST handlers' threads and the CLI)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _newest(self, select: str, filters: Mapping[str, object], limit: int) -> list[tuple[Any, ...]]:
        """The rows of ``select`` (a ``SELECT ... FROM table``) whose columns equal the ``filters``
        that are not None, newest (highest ``id``) first, at most ``limit``."""
        given = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in given)  # column names come from our code only
        sql = select + (f" WHERE {where}" if where else "") + " ORDER BY id DESC LIMIT ?"
        with self._lock:
            return self._db().execute(sql, (*given.values(), limit)).fetchall()
