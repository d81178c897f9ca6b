"""Webhook endpoints and their deliveries, as operators manage them (CLI, REST): synchronous and
short, on the outbox tables of the store's file (:mod:`iothub.hub.outbox`)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

from iothub.hub import outbox
from iothub.hub.errors import AlertsError, UnknownName
from iothub.hub.signing import new_secret

_ENDPOINT_COLUMNS = "id, url, events, description, enabled, disabled_reason, created, previous_until"
_DELIVERY_COLUMNS = "id, msg_id, endpoint_id, type, state, attempts, next_at, created, updated"


def _now() -> int:
    return time.time_ns() // 1_000_000


def _endpoint(row: tuple[Any, ...], now: int) -> dict[str, Any]:
    i, url, events, description, enabled, reason, created, previous_until = row
    rotating = previous_until is not None and previous_until > now
    return {
        "id": i, "url": url, "events": json.loads(events), "description": description, "enabled": bool(enabled),
        "disabled_reason": reason, "created": outbox.iso_ms(created),
        "previous_secret_until": outbox.iso_ms(previous_until) if rotating else None,
    }  # fmt: skip


def _delivery(row: tuple[Any, ...]) -> dict[str, Any]:
    i, msg_id, endpoint_id, kind, state, attempts, next_at, created, updated = row
    return {
        "id": i, "msg_id": msg_id, "endpoint_id": endpoint_id, "type": kind, "state": state, "attempts": attempts,
        "next_attempt": outbox.iso_ms(next_at) if state == "pending" else None,
        "created": outbox.iso_ms(created), "updated": outbox.iso_ms(updated),
    }  # fmt: skip


def check_events(events: Iterable[str]) -> list[str]:
    chosen = sorted(set(events))
    if not chosen:
        raise AlertsError(f"events: choose at least one of {', '.join(outbox.EVENT_TYPES)}")
    for kind in chosen:
        if kind not in outbox.EVENT_TYPES:
            raise AlertsError(f"events: {kind!r} is not one of {', '.join(outbox.EVENT_TYPES)}")
    return chosen


class WebhookAdmin(outbox.OutboxDb):
    def add(self, url: str, events: Iterable[str], description: str = "") -> tuple[dict[str, Any], str]:
        """Add an endpoint (its URL checked by the caller); returns it and its ``whsec_`` secret."""
        chosen = check_events(events)
        endpoint_id = "ep_" + secrets.token_hex(8)
        secret = new_secret()
        with self._lock:
            self._db().execute(
                "INSERT INTO webhook_endpoints (id, url, events, description, secret, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (endpoint_id, url, json.dumps(chosen), description, secret, _now()),
            )
        return self.get(endpoint_id), secret

    def endpoints(self) -> list[dict[str, Any]]:
        now = _now()
        with self._lock:
            rows = self._db().execute(f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created, id")
            return [_endpoint(r, now) for r in rows.fetchall()]

    def get(self, endpoint_id: str) -> dict[str, Any]:
        with self._lock:
            row = (
                self._db()
                .execute(f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
                .fetchone()
            )
        if row is None:
            raise UnknownName(f"no webhook endpoint {endpoint_id!r}")
        return _endpoint(row, _now())

    def set_enabled(self, endpoint_id: str, enabled: bool) -> dict[str, Any]:
        """Enable (its pending deliveries go out again) or disable an endpoint (new events are not
        queued for a disabled endpoint: :func:`outbox.record` writes rows for enabled ones only)."""
        with self._lock:
            self._db().execute(
                "UPDATE webhook_endpoints SET enabled = ?, disabled_reason = ? WHERE id = ?",
                (int(enabled), None if enabled else "disabled by an operator", endpoint_id),
            )
        return self.get(endpoint_id)

    def remove(self, endpoint_id: str) -> None:
        """Remove an endpoint with its deliveries and their attempts."""
        with self._lock, outbox.transaction(self._db()) as conn:
            gone = conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,)).rowcount
            conn.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN"
                " (SELECT id FROM webhook_outbox WHERE endpoint_id = ?)",
                (endpoint_id,),
            )
            conn.execute("DELETE FROM webhook_outbox WHERE endpoint_id = ?", (endpoint_id,))
        if not gone:
            raise UnknownName(f"no webhook endpoint {endpoint_id!r}")

    def rotate_secret(self, endpoint_id: str, overlap_s: float) -> tuple[dict[str, Any], str]:
        """A new secret; the current one still signs (beside it) for ``overlap_s`` seconds."""
        secret = new_secret()
        until = _now() + round(overlap_s * 1000)
        with self._lock:
            changed = (
                self._db()
                .execute(
                    "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = ?, secret = ?"
                    " WHERE id = ?",
                    (until, secret, endpoint_id),
                )
                .rowcount
            )
        if not changed:
            raise UnknownName(f"no webhook endpoint {endpoint_id!r}")
        return self.get(endpoint_id), secret

    def deliveries(
        self, endpoint_id: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Deliveries, newest first."""
        rows = self._newest(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_outbox", {"endpoint_id": endpoint_id, "state": state}, limit
        )
        return [_delivery(r) for r in rows]

    def delivery(self, delivery_id: int) -> dict[str, Any]:
        """One delivery with its body and every attempt (status, latency, response snippet)."""
        with self._lock:
            conn = self._db()
            row = conn.execute(f"SELECT {_DELIVERY_COLUMNS}, body FROM webhook_outbox WHERE id = ?", (delivery_id,))
            found = row.fetchone()
            if found is None:
                raise UnknownName(f"no webhook delivery {delivery_id}")
            attempts = conn.execute(
                "SELECT attempt, ts, status, latency_ms, outcome, response FROM webhook_attempts"
                " WHERE delivery_id = ? ORDER BY id",
                (delivery_id,),
            ).fetchall()
        return {
            **_delivery(found[:-1]),
            "body": json.loads(found[-1]),
            "attempts_log": [
                {
                    "attempt": n,
                    "ts": outbox.iso_ms(ts),
                    "status": status,
                    "latency_ms": round(latency, 1),
                    "outcome": outcome,
                    "response": response,
                }
                for n, ts, status, latency, outcome, response in attempts
            ],
        }

    def redeliver(self, delivery_id: int) -> dict[str, Any]:
        """Send a delivery again now: a fresh retry schedule; its message id and earlier attempts stay."""
        with self._lock:
            changed = (
                self._db()
                .execute(
                    "UPDATE webhook_outbox SET state = 'pending', schedule_from = attempts, next_at = ?, updated = ?"
                    " WHERE id = ? AND state != 'sending'",
                    (_now(), _now(), delivery_id),
                )
                .rowcount
            )
        if not changed:
            self.delivery(delivery_id)  # UnknownName when there is none
            raise AlertsError(f"webhook delivery {delivery_id} is being sent right now")
        return self.delivery(delivery_id)
