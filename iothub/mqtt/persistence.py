"""Persistent sessions and retained messages across restarts, in one SQLite file.

The server hands over a :class:`Snapshot` (plain rows, :meth:`~.server.MqttServer.snapshot`) and takes
one back (:meth:`~.server.MqttServer.restore`); :class:`BrokerState` saves and loads it.

What is saved: every persistent session (clean_session=0) with its subscriptions, its messages in
flight (packet id, whether PUBREL was sent) and queued, and the QoS 2 packet ids it published that
wait for PUBREL; and every retained message. Payloads are BLOBs, stored byte for byte.

When: whenever the application checkpoints (the hub: every ``mqtt.checkpoint_s`` when something
changed, and when it stops). A snapshot replaces the previous one in one transaction, so a message
acknowledged before the stop is not in it and is not sent again after the restart. After a crash,
the state is the last checkpoint's: messages acknowledged after it may be delivered again (with
DUP), and retained messages or subscriptions changed after it are lost.

Errors: a state file that cannot be opened or read (not an SQLite database, damaged, of another
layout, a directory, no permission) raises :class:`StateError` naming the file, and nothing is
served. Starting afresh instead would silently drop every persistent session, with the messages
queued for it, and every retained message (devices' last status, desired twin states); so the
choice is left to the user, whom the message tells how to make it: move the file aside to start
without them. A save that fails raises :class:`StateError` too, and leaves the file as the previous
save made it; the caller decides whether to try again (the hub logs it and retries at its next
checkpoint).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from iothub.mqtt.sessions import Limits, Message, Outgoing, Session

_SCHEMA = """
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, next_packet_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (client_id TEXT NOT NULL, filter TEXT NOT NULL, qos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    client_id TEXT NOT NULL, position INTEGER NOT NULL, packet_id INTEGER, released INTEGER NOT NULL,
    topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS awaiting_rel (client_id TEXT NOT NULL, packet_id INTEGER NOT NULL);
"""

_COLUMNS = {  # what load reads from each table; a file whose tables lack these is not ours
    "retained": "topic, payload, qos",
    "sessions": "client_id, next_packet_id",
    "subscriptions": "client_id, filter, qos",
    "messages": "client_id, position, packet_id, released, topic, payload, qos, retain",
    "awaiting_rel": "client_id, packet_id",
}
_MessageRow = tuple[str, int, int | None, int, str, bytes, int, int]
_MOVE_ASIDE = "move it aside to start without the saved sessions and retained messages"


class StateError(Exception):
    """The state file cannot be opened, read or written; the message names the file."""


@dataclass
class Snapshot:
    """Rows as saved; ``messages`` in each session's order (in flight first, then queued)."""

    retained: list[tuple[str, bytes, int]] = field(default_factory=list)
    sessions: list[tuple[str, int]] = field(default_factory=list)
    subscriptions: list[tuple[str, str, int]] = field(default_factory=list)
    messages: list[_MessageRow] = field(default_factory=list)
    awaiting_rel: list[tuple[str, int]] = field(default_factory=list)


class BrokerState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open (or create) the file; :class:`StateError` if it is not one this module can use."""
        db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            _check_layout(db)  # before anything is written to it
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            raise StateError(f"cannot open the broker state {self.path}: {exc}; {_MOVE_ASIDE}") from exc
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"{self.path} is not open")
        return self._db

    def load(self) -> Snapshot:
        """What the last save stored; :class:`StateError` if the file cannot be read."""
        try:
            return self._load(self.db)
        except sqlite3.Error as exc:
            raise StateError(f"cannot read the broker state {self.path}: {exc}; {_MOVE_ASIDE}") from exc

    @staticmethod
    def _load(db: sqlite3.Connection) -> Snapshot:
        return Snapshot(
            retained=[(t, bytes(p), q) for t, p, q in db.execute("SELECT topic, payload, qos FROM retained")],
            sessions=list(db.execute("SELECT client_id, next_packet_id FROM sessions")),
            subscriptions=list(db.execute("SELECT client_id, filter, qos FROM subscriptions")),
            messages=[
                (cid, position, packet_id, released, topic, bytes(payload), qos, retain)
                for cid, position, packet_id, released, topic, payload, qos, retain in db.execute(
                    "SELECT client_id, position, packet_id, released, topic, payload, qos, retain FROM messages"
                    " ORDER BY client_id, position"
                )
            ],
            awaiting_rel=list(db.execute("SELECT client_id, packet_id FROM awaiting_rel")),
        )

    def save(self, snap: Snapshot) -> None:
        """Replace what is saved with ``snap``, in one transaction; :class:`StateError` if it fails."""
        try:
            self._save(self.db, snap)
        except sqlite3.Error as exc:
            raise StateError(f"cannot save the broker state to {self.path}: {exc}") from exc

    @staticmethod
    def _save(db: sqlite3.Connection, snap: Snapshot) -> None:
        with db:
            db.execute("BEGIN")
            for table in ("retained", "sessions", "subscriptions", "messages", "awaiting_rel"):
                db.execute(f"DELETE FROM {table}")  # fixed table names
            db.executemany("INSERT INTO retained VALUES (?, ?, ?)", snap.retained)
            db.executemany("INSERT INTO sessions VALUES (?, ?)", snap.sessions)
            db.executemany("INSERT INTO subscriptions VALUES (?, ?, ?)", snap.subscriptions)
            db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)", snap.messages)
            db.executemany("INSERT INTO awaiting_rel VALUES (?, ?)", snap.awaiting_rel)


def _check_layout(db: sqlite3.Connection) -> None:
    """Raise :class:`sqlite3.Error` unless the file is new or holds the broker's tables (those missing are
    created afterwards, so a file saved by an earlier version with fewer tables still opens)."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and not tables & _COLUMNS.keys():
        raise sqlite3.DatabaseError(f"it holds none of the broker's tables, but {', '.join(sorted(tables))}")
    for table in tables & _COLUMNS.keys():
        db.execute(f"SELECT {_COLUMNS[table]} FROM {table} LIMIT 0")  # fixed names


def take_snapshot(retained: dict[str, tuple[bytes, int]], sessions: Iterable[Session]) -> Snapshot:
    """Copy what is to be saved: every retained message and every persistent session."""
    snap = Snapshot(retained=[(topic, payload, qos) for topic, (payload, qos) in retained.items()])
    for session in sessions:
        if session.clean:
            continue
        cid = session.client_id
        snap.sessions.append((cid, session.next_packet_id))
        snap.subscriptions.extend((cid, f, qos) for f, qos in session.subscriptions.items())
        position = 0
        for items, in_flight in ((session.inflight.values(), True), (session.queue, False)):
            for item in items:
                m = item.message
                packet_id = item.packet_id if in_flight else None
                snap.messages.append(
                    (cid, position, packet_id, int(item.released), m.topic, m.payload, item.qos, int(m.retain))
                )
                position += 1
        snap.awaiting_rel.extend((cid, packet_id) for packet_id in session.awaiting_rel)
    return snap


def rebuild(snap: Snapshot, limits: Limits) -> tuple[dict[str, tuple[bytes, int]], list[Session]]:
    """The retained messages and the sessions a snapshot holds."""
    retained = {topic: (payload, qos) for topic, payload, qos in snap.retained}
    sessions: dict[str, tuple[Session, list[Outgoing], list[Outgoing]]] = {}
    next_ids: dict[str, int] = {}
    for client_id, next_packet_id in snap.sessions:
        sessions[client_id] = (Session(client_id, False, limits), [], [])
        next_ids[client_id] = next_packet_id
    for client_id, topic_filter, qos in snap.subscriptions:
        if client_id in sessions:
            sessions[client_id][0].subscriptions[topic_filter] = qos
    for client_id, _, packet_id, released, topic, payload, qos, retain in snap.messages:  # in position order
        if client_id not in sessions:
            continue
        item = Outgoing(Message(topic, payload, bool(retain)), qos)
        if packet_id is None:
            sessions[client_id][2].append(item)
        else:
            item.packet_id, item.released = packet_id, bool(released)
            sessions[client_id][1].append(item)
    for client_id, packet_id in snap.awaiting_rel:
        if client_id in sessions:
            sessions[client_id][0].awaiting_rel.add(packet_id)
    for client_id, (session, inflight, queued) in sessions.items():
        session.restore(next_ids[client_id], inflight, queued)
    return retained, [session for session, _, _ in sessions.values()]
