"""The delivery worker's side of the outbox: claim due rows, record each attempt and its outcome.

Synchronous and short; the worker runs every call in its own thread. One connection, so calls are
serialised; SQLite's write lock is shared with the store's writer (``busy_timeout`` waits for it).
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from iothub.hub import outbox


class State(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery taken for one attempt, with what signing and sending need."""

    id: int
    msg_id: str
    endpoint_id: str
    url: str
    body: str
    attempts: int  # made before this one
    retries: int  # of those, made since the current retry schedule began (a redelivery starts one)
    secrets: tuple[str, ...]  # newest first; two during a rotation


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to, and what happens next."""

    status: int | None  # the HTTP status, None when no answer came
    latency_ms: float
    outcome: str  # delivered, failed, timeout, error, refused (the address guard)
    response: str  # the start of the response body, or the error
    next_state: State
    next_at: int
    disable: str | None = None  # a reason to disable the endpoint (410 Gone)


_CLAIM = """
WITH busy AS (
    SELECT endpoint_id, COUNT(*) AS n FROM webhook_outbox WHERE state = 'sending' GROUP BY endpoint_id
), ranked AS (
    SELECT o.id, o.endpoint_id, o.next_at,
           ROW_NUMBER() OVER (PARTITION BY o.endpoint_id ORDER BY o.next_at, o.id) AS rn
    FROM webhook_outbox o JOIN webhook_endpoints e ON e.id = o.endpoint_id
    WHERE o.state = 'pending' AND o.next_at <= ? AND e.enabled = 1 {paused}
)
SELECT r.id FROM ranked r LEFT JOIN busy b ON b.endpoint_id = r.endpoint_id
WHERE r.rn + COALESCE(b.n, 0) <= ? ORDER BY r.next_at, r.id LIMIT ?
"""


class Deliveries:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        """Connect; rows a stopped (or killed) hub left ``sending`` are ``pending`` again."""
        self._conn = outbox.connect(self.path)
        self._conn.execute("UPDATE webhook_outbox SET state = 'pending' WHERE state = 'sending'")

    def close(self) -> None:
        """Put deliveries whose attempts were cancelled back to ``pending``, and disconnect."""
        if self._conn is not None:
            self._conn.execute("UPDATE webhook_outbox SET state = 'pending' WHERE state = 'sending'")
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "Deliveries.open() first"
        return self._conn

    def claim(self, now_ms: int, per_endpoint: int, limit: int, paused: frozenset[str]) -> list[Claimed]:
        """Take up to ``limit`` due deliveries, at most ``per_endpoint`` in flight per endpoint, none
        for the ``paused`` endpoints (a tripped circuit breaker), and mark them ``sending``."""
        conn = self.conn
        marks = ",".join("?" * len(paused))
        sql = _CLAIM.format(paused=f"AND o.endpoint_id NOT IN ({marks})" if paused else "")
        with outbox.transaction(conn):
            ids = [i for (i,) in conn.execute(sql, (now_ms, *sorted(paused), per_endpoint, limit))]
            marks = ",".join("?" * len(ids))
            conn.execute(f"UPDATE webhook_outbox SET state = 'sending' WHERE id IN ({marks})", ids)
            rows = conn.execute(
                "SELECT o.id, o.msg_id, o.endpoint_id, e.url, o.body, o.attempts, o.schedule_from, e.secret,"
                " e.previous_secret, e.previous_until"
                " FROM webhook_outbox o JOIN webhook_endpoints e ON e.id = o.endpoint_id"
                f" WHERE o.id IN ({marks}) ORDER BY o.next_at, o.id",
                ids,
            ).fetchall()
        claimed = []
        for i, msg_id, endpoint_id, url, body, attempts, schedule_from, secret, previous, until in rows:
            keys = (secret, previous) if previous and until is not None and until > now_ms else (secret,)
            claimed.append(Claimed(i, msg_id, endpoint_id, url, body, attempts, attempts - schedule_from, keys))
        return claimed

    def finish(self, done: list[tuple[Claimed, Outcome, int]]) -> None:
        """Record attempts (``(delivery, outcome, when)``) and move their deliveries on, in one transaction."""
        conn = self.conn
        with outbox.transaction(conn):
            for delivery, result, now_ms in done:
                attempt = delivery.attempts + 1
                conn.execute(
                    "INSERT INTO webhook_attempts (delivery_id, attempt, ts, status, latency_ms, outcome, response)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (delivery.id, attempt, now_ms, result.status, result.latency_ms, result.outcome, result.response),
                )
                conn.execute(
                    "UPDATE webhook_outbox SET state = ?, attempts = ?, next_at = ?, updated = ? WHERE id = ?",
                    (result.next_state.value, attempt, result.next_at, now_ms, delivery.id),
                )
                if result.disable is not None:
                    conn.execute(
                        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ? WHERE id = ?",
                        (result.disable, delivery.endpoint_id),
                    )

    def release(self, claimed: Sequence[Claimed]) -> None:
        """Put back deliveries that were claimed but not attempted (the worker is stopping)."""
        self.conn.executemany(
            "UPDATE webhook_outbox SET state = 'pending' WHERE id = ? AND state = 'sending'",
            [(delivery.id,) for delivery in claimed],
        )

    def next_due(self) -> int | None:
        """When the earliest pending delivery of an enabled endpoint is due (epoch ms), or None."""
        (due,) = self.conn.execute(
            "SELECT MIN(o.next_at) FROM webhook_outbox o JOIN webhook_endpoints e ON e.id = o.endpoint_id"
            " WHERE o.state = 'pending' AND e.enabled = 1"
        ).fetchone()
        return None if due is None else int(due)

    def prune(self, webhooks_before_ms: int, alerts_before_ms: int, limit: int) -> int:
        """Rows past retention, up to ``limit`` per table (:func:`outbox.prune`)."""
        return outbox.prune(self.conn, webhooks_before_ms, alerts_before_ms, limit)
